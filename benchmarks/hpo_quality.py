"""Search quality at equal compute: ConvexitySampler against Optuna's own samplers.

On scikit-learn's breast_cancer, digits, wine and iris (fixed stratified 60/20/20 splits), a
PyTorch MLP is tuned over a search space modelled on the authors' tabular one. Every method runs
as a real Optuna study (in memory) and is charged the training epochs it spends:

- ``convexity[<estimator>]``: ``ConvexitySampler(n_screening, n_promoted)`` with
  ``ConvexityPruner``: ``n_screening`` one-epoch screening trials scored by ``mu``, then the
  ``n_promoted`` flattest trained for the full budget of ``--epochs`` epochs. Its total,
  ``n_screening + n_promoted * epochs``, is *the budget*.
- ``convexity[<estimator>, better half]``: the same with ``criterion="mu_in_better_half"`` (rank
  by ``mu`` among the candidates whose one-epoch validation accuracy is in the better half).
- ``random``, ``tpe``: full-budget trials until the budget is spent (the last trial may cross
  it); ``tpe+hyperband``: TPE with ``HyperbandPruner(1, epochs, 3)``, every epoch counted.
  Each at the budget (``1x``) and at three times it (``3x``).

Each study's best trial (by validation accuracy, Optuna's ``study.best_trial``) is judged by
its *test* accuracy. Over ``--seeds`` seeds the report gives the median and the interquartile
range, the epochs spent and the wall time each study would have taken on its own.

Rank quality (``--rank-seeds`` runs per dataset): every screening candidate of the run is also
trained to the full budget; the report gives Spearman's correlation between each estimator's
``mu`` and that final test accuracy, next to the correlation of the one-epoch validation
accuracy, and what the ``n_promoted`` candidates each rule would promote reach when trained to
the end (the under-training risk: a low ``mu`` after one epoch may only mean a configuration
that has barely moved).

How compute is shared: training is deterministic per (run seed, configuration), so a
configuration that several studies of one seed ask for is trained once (``_hpo.TrainingPool``)
and every study is charged the epochs and the recorded seconds it used, as if it had trained
alone. Methods of the same seed therefore see the same model for the same configuration.

Usage::

    python benchmarks/hpo_quality.py            # full: 10 seeds, writes benchmarks/results/
    python benchmarks/hpo_quality.py --quick    # smoke run (about a minute on 2 cores)

Needs the ``benchmark`` extra (``pip install -e ".[benchmark]"``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
from concurrent.futures import as_completed
from concurrent.futures import ProcessPoolExecutor
import dataclasses
import json
import math
import multiprocessing
import os
from pathlib import Path
import platform
import sys
import time
from typing import Any
import warnings

import numpy as np
import optuna
from scipy.stats import rankdata
from scipy.stats import spearmanr
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))

import _hpo

import optuna_convexity
from optuna_convexity import _criteria


RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The scale of a benchmark run."""

    datasets: tuple[str, ...]
    seeds: int
    rank_seeds: int
    n_screening: int
    n_promoted: int
    epochs: int
    workers: int

    @property
    def budget(self) -> int:
        """Epochs a convexity search spends: the 1x budget of every other method."""
        return self.n_screening + self.n_promoted * self.epochs


FULL = Settings(
    datasets=tuple(_hpo.PROBLEMS),
    seeds=10,
    rank_seeds=3,
    n_screening=50,
    n_promoted=10,
    epochs=20,
    workers=2,
)
QUICK = dataclasses.replace(
    FULL,
    datasets=("mnist1d", "iris"),
    seeds=2,
    rank_seeds=1,
    n_screening=12,
    n_promoted=3,
    epochs=4,
)

#: What a convexity search ranks by, and with which estimators it is measured: the paper's rule
#: with each estimator; the others with the default estimator, and the criterion that uses
#: ``mu`` in the direction the data supports with the whole-network estimator as well.
CONVEXITY = (
    *(("mu", estimator) for estimator in _hpo.ESTIMATORS),
    ("mu_in_better_half", "last_layer"),
    *(("high_mu_in_better_half", estimator) for estimator in _hpo.ESTIMATORS),
    ("value", "last_layer"),
    ("train_loss", "last_layer"),
)
#: Criteria that do not read ``mu`` (the estimator only decides which candidates are valid).
WITHOUT_MU = ("value", "train_loss")
STANDARD = ("random", "tpe", "tpe+hyperband", "random+sh")


@dataclasses.dataclass(frozen=True)
class Method:
    """One search method and its budget."""

    kind: str  # "convexity", or one of STANDARD
    estimator: str | None = None
    criterion: str = "mu"
    budget_factor: int = 1

    @property
    def name(self) -> str:
        if self.kind == "convexity":
            if self.criterion in WITHOUT_MU:
                return f"convexity[{self.criterion}]"
            return f"convexity[{self.criterion}, {self.estimator}]"
        return f"{self.kind} {self.budget_factor}x"


METHODS = (
    *(Method("convexity", estimator, criterion) for criterion, estimator in CONVEXITY),
    *(Method(kind, budget_factor=factor) for factor in (1, 3) for kind in STANDARD),
)


@dataclasses.dataclass
class Run:
    """The outcome of one study."""

    dataset: str
    seed: int
    method: str
    budget: int
    epochs: int
    n_trials: int
    test_accuracy: float
    valid_accuracy: float
    wall_seconds: float
    best_params: dict[str, Any]
    promoted: list[str] = dataclasses.field(default_factory=list)


class _Meter:
    """Epochs and seconds one study is charged for the trainings it uses."""

    def __init__(self) -> None:
        self.epochs = 0
        self.seconds = 0.0

    def epoch(self, training: _hpo.Training, number: int) -> _hpo.Epoch:
        result = training.epoch(number)
        self.epochs += 1
        self.seconds += result.seconds
        return result


def _run_study(
    study: optuna.Study,
    pool: _hpo.TrainingPool,
    objective: Callable[[optuna.Trial], float],
    meter: _Meter,
    **optimize: Any,
) -> float:
    """Optimize and return the wall time the study would have taken on its own."""
    computed_before = pool.compute_seconds
    start = time.perf_counter()
    study.optimize(objective, **optimize)
    elapsed = time.perf_counter() - start
    computed_here = pool.compute_seconds - computed_before
    return elapsed - computed_here + meter.seconds


def _outcome(
    study: optuna.Study,
    method: Method,
    pool: _hpo.TrainingPool,
    budget: int,
    meter: _Meter,
    wall: float,
    promoted: list[str] | None = None,
) -> Run:
    """The :class:`Run` of a finished study, judged by its best trial's test accuracy."""
    test, valid, params = math.nan, math.nan, {}
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        best = study.best_trial
        test, valid, params = best.user_attrs["test_accuracy"], best.value, best.params
    return Run(
        pool.splits.name,
        pool.seed,
        method.name,
        budget,
        meter.epochs,
        len(study.trials),
        float(test),
        float(valid),  # type: ignore[arg-type]
        wall,
        dict(params),
        promoted or [],
    )


def run_convexity(method: Method, pool: _hpo.TrainingPool, settings: Settings) -> Run:
    assert method.estimator is not None
    estimator = method.estimator
    meter = _Meter()

    def objective(trial: optuna.Trial) -> float:
        training = pool.get(_hpo.suggest_config(trial, pool.splits.space))
        if optuna_convexity.is_screening(trial):
            first = training.screen()
            meter.epochs += 1
            score = training.scores[estimator]
            meter.seconds += first.seconds + score.seconds
            optuna_convexity.record_mu(trial, score.mu, estimator=estimator, train_loss=score.loss)
            trial.report(first.valid_accuracy, 0)
            if trial.should_prune():
                raise optuna.TrialPruned()
            raise RuntimeError("ConvexityPruner did not end a scored screening trial")
        for number in range(1, settings.epochs + 1):
            result = meter.epoch(training, number)
            trial.report(result.valid_accuracy, number - 1)
        trial.set_user_attr("test_accuracy", result.test_accuracy)
        return result.valid_accuracy

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(
            settings.n_screening,
            settings.n_promoted,
            seed=pool.seed,
            estimator=estimator,
            criterion=method.criterion,  # type: ignore[arg-type]
        ),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    wall = _run_study(
        study, pool, objective, meter, n_trials=settings.n_screening + settings.n_promoted
    )
    promoted = [
        _hpo.Config.of(t.params).key() for t in study.trials if optuna_convexity.is_promoted(t)
    ]
    return _outcome(study, method, pool, settings.budget, meter, wall, promoted)


def run_standard(method: Method, pool: _hpo.TrainingPool, settings: Settings) -> Run:
    budget = settings.budget * method.budget_factor
    meter = _Meter()

    def objective(trial: optuna.Trial) -> float:
        training = pool.get(_hpo.suggest_config(trial, pool.splits.space))
        for number in range(1, settings.epochs + 1):
            result = meter.epoch(training, number)
            trial.report(result.valid_accuracy, number - 1)
            if trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("test_accuracy", result.test_accuracy)
        return result.valid_accuracy

    def stop_at_budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if meter.epochs >= budget:
            study.stop()

    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if method.kind.startswith("random"):
        sampler = optuna.samplers.RandomSampler(seed=pool.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=pool.seed)  # Optuna's defaults
    if method.kind == "tpe+hyperband":
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=settings.epochs, reduction_factor=3
        )
    elif method.kind == "random+sh":
        pruner = optuna.pruners.SuccessiveHalvingPruner()  # Optuna's defaults
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    wall = _run_study(study, pool, objective, meter, callbacks=[stop_at_budget])
    return _outcome(study, method, pool, budget, meter, wall)


def rank_quality(
    pool: _hpo.TrainingPool, screened: Sequence[_hpo.Config], settings: Settings
) -> list[dict[str, Any]]:
    """Every screened candidate trained to the full budget, next to its one-epoch scores."""
    rows = []
    for config in screened:
        training = pool.get(config)
        final = training.epoch(settings.epochs)
        first = training.epochs[0]
        rows.append(
            {
                "dataset": pool.splits.name,
                "seed": pool.seed,
                "config": config.key(),
                "lr": config.lr,
                "batch_size": config.batch_size,
                "mu": {name: score.mu for name, score in training.scores.items()},
                "train_loss_1": training.scores["last_layer"].loss,
                "valid_accuracy_1": first.valid_accuracy,
                "valid_loss_1": first.valid_loss,
                "test_accuracy": final.test_accuracy,
                "valid_accuracy": final.valid_accuracy,
            }
        )
    return rows


def run_job(dataset: str, seed: int, settings: Settings) -> dict[str, Any]:
    """Every method on one (dataset, seed); the convexity searches first (they screen)."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    pool = _hpo.TrainingPool(_hpo.load_splits(dataset), seed, settings.epochs)
    runs = []
    for method in METHODS:
        runner = run_convexity if method.kind == "convexity" else run_standard
        runs.append(runner(method, pool, settings))
    rows: list[dict[str, Any]] = []
    if seed < settings.rank_seeds:
        screened = [
            t.config for t in pool if t.scores
        ]  # every configuration screened by the convexity searches of this seed
        rows = rank_quality(pool, screened, settings)
    pool.release_all()
    return {
        "runs": [dataclasses.asdict(r) for r in runs],
        "rank_quality": rows,
        "compute_seconds": pool.compute_seconds,
        "seconds": time.perf_counter() - start,
    }


# -- report ------------------------------------------------------------------------------


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, math.nan
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    return float(q1), float(median), float(q3)


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan
    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return float(rho)


def rank_signals() -> dict[str, Callable[[dict[str, Any]], float]]:
    """The one-epoch signals of a rank-quality row, by name (validation accuracy first)."""
    signals: dict[str, Callable[[dict[str, Any]], float]] = {
        "one-epoch validation accuracy": lambda r: r["valid_accuracy_1"],
        "one-epoch training loss": lambda r: r.get("train_loss_1", math.nan),
    }
    for name in _hpo.ESTIMATORS:
        signals[f"μ {name}"] = lambda r, name=name: r["mu"][name]
    return signals


def _ranks(values: Sequence[float]) -> np.ndarray:
    return np.asarray(rankdata(values), dtype=float)


def _partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Spearman's ρ of ``x`` and ``y`` given ``z``: the partial correlation of the ranks."""
    triples = [(a, b, c) for a, b, c in zip(x, y, z) if all(map(math.isfinite, (a, b, c)))]
    if len(triples) < 4:
        return math.nan
    rx, ry, rz = (_ranks([t[i] for t in triples]) for i in range(3))
    r = np.corrcoef([rx, ry, rz])
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    denominator = math.sqrt(max((1 - rxz**2) * (1 - ryz**2), 0.0))
    return float((rxy - rxz * ryz) / denominator) if denominator > 0 else math.nan


def _mean_rho(
    rows: Sequence[dict[str, Any]],
    score: Callable[[dict[str, Any]], float],
    given: Callable[[dict[str, Any]], float] | None = None,
) -> str:
    """Spearman's ρ (partial, ``given`` a signal) of ``score`` against the final test
    accuracy, averaged over runs."""
    rhos = []
    for seed in sorted({r["seed"] for r in rows}):
        run = [r for r in rows if r["seed"] == seed]
        tests = [r["test_accuracy"] for r in run]
        if given is None:
            rhos.append(_spearman([score(r) for r in run], tests))
        else:
            rhos.append(_partial_spearman([score(r) for r in run], tests, [given(r) for r in run]))
    rhos = [rho for rho in rhos if math.isfinite(rho)]
    return _fmt(float(np.mean(rhos)) if rhos else math.nan, 2)


def _bootstrap_difference(
    differences: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean paired difference and its percentile bootstrap 95 % CI (resampling seeds)."""
    values = np.asarray([d for d in differences if math.isfinite(d)], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def difference_table(runs: Sequence[dict[str, Any]], datasets: Sequence[str]) -> list[str]:
    """Each method's test accuracy minus random search's at the same budget, paired by seed."""
    lines = [
        "| method | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for method in METHODS:
        if method.kind == "random":
            continue
        baseline = f"random {method.budget_factor}x"
        cells = []
        for dataset in datasets:
            mine = {
                r["seed"]: r["test_accuracy"]
                for r in runs
                if r["method"] == method.name and r["dataset"] == dataset
            }
            theirs = {
                r["seed"]: r["test_accuracy"]
                for r in runs
                if r["method"] == baseline and r["dataset"] == dataset
            }
            paired = [100 * (mine[k] - theirs[k]) for k in sorted(mine.keys() & theirs.keys())]
            mean, low, high = _bootstrap_difference(paired)
            mark = " *" if low > 0 else (" †" if high < 0 else "")
            cells.append(
                "–" if not math.isfinite(mean) else f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]{mark}"
            )
        lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    return lines


def criterion_choice(runs: Sequence[dict[str, Any]], datasets: Sequence[str]) -> list[str]:
    """The default criterion, chosen on *validation* accuracy alone.

    For every convexity method with the default estimator or without ``mu``, the median over
    seeds of the validation accuracy of the study's best trial, per problem; the choice is the
    method with the best mean rank over the problems (test accuracy is never looked at).
    """
    names = [
        m.name
        for m in METHODS
        if m.kind == "convexity" and (m.estimator == "last_layer" or m.criterion in WITHOUT_MU)
    ]
    medians = {
        (name, dataset): float(
            np.median(
                [
                    r["valid_accuracy"]
                    for r in runs
                    if r["method"] == name and r["dataset"] == dataset
                ]
                or [math.nan]
            )
        )
        for name in names
        for dataset in datasets
    }
    mean_rank = {}
    for name in names:
        places = []
        for dataset in datasets:
            column = sorted(-medians[(other, dataset)] for other in names)
            places.append(1 + column.index(-medians[(name, dataset)]))
        mean_rank[name] = float(np.mean(places))
    chosen = min(names, key=lambda name: (mean_rank[name], names.index(name)))
    lines = [
        "| method | " + " | ".join(datasets) + " | mean rank |",
        "|---|" + "---|" * len(datasets) + "---:|",
    ]
    for name in names:
        cells = [_fmt(medians[(name, dataset)]) for dataset in datasets]
        marker = " (chosen)" if name == chosen else ""
        lines.append(f"| {name}{marker} | " + " | ".join(cells) + f" | {mean_rank[name]:.1f} |")
    return lines


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _accuracy_cell(values: Sequence[float]) -> str:
    q1, median, q3 = _quartiles(values)
    return f"{_fmt(median)} [{_fmt(q1)}, {_fmt(q3)}]"


def _method_names() -> list[str]:
    return [m.name for m in METHODS]


def headline_table(runs: Sequence[dict[str, Any]], datasets: Sequence[str]) -> list[str]:
    lines = [
        "| method | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for name in _method_names():
        cells = []
        for dataset in datasets:
            values = [
                r["test_accuracy"] for r in runs if r["method"] == name and r["dataset"] == dataset
            ]
            cells.append(_accuracy_cell(values))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def dataset_table(runs: Sequence[dict[str, Any]], dataset: str) -> list[str]:
    lines = [
        "| method | budget (epochs) | epochs spent | trials | test accuracy, median [IQR] "
        "| validation accuracy | wall time (s) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name in _method_names():
        mine = [r for r in runs if r["method"] == name and r["dataset"] == dataset]
        if not mine:
            continue
        lines.append(
            f"| {name} | {mine[0]['budget']} "
            f"| {_fmt(float(np.median([r['epochs'] for r in mine])), 0)} "
            f"| {_fmt(float(np.median([r['n_trials'] for r in mine])), 0)} "
            f"| {_accuracy_cell([r['test_accuracy'] for r in mine])} "
            f"| {_fmt(_quartiles([r['valid_accuracy'] for r in mine])[1])} "
            f"| {_fmt(float(np.median([r['wall_seconds'] for r in mine])), 1)} |"
        )
    return lines


def rank_tables(
    rows: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    datasets: Sequence[str],
    settings: Settings,
) -> list[str]:
    """Spearman correlations, and what each promotion rule's picks reach at full budget."""
    signals = rank_signals()
    lines = [
        "Spearman's ρ between a one-epoch signal and the test accuracy the candidate reaches "
        f"after {settings.epochs} epochs ({settings.n_screening} candidates per run, mean over "
        "runs). The paper's premise predicts a *negative* ρ for μ (flatter = better). *partial* "
        "is the partial Spearman ρ given the one-epoch validation accuracy: what the signal "
        "says about the final accuracy beyond what the validation accuracy already says.",
        "",
        "| dataset | runs | "
        + " | ".join(signals)
        + " | "
        + " | ".join(f"partial: {name}" for name in list(signals)[1:])
        + " |",
        "|---|---:|" + "---:|" * (2 * len(signals) - 1),
    ]
    for dataset in datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        seeds = len({r["seed"] for r in mine})
        cells = [_mean_rho(mine, score) for score in signals.values()]
        given = signals["one-epoch validation accuracy"]
        cells += [_mean_rho(mine, score, given=given) for score in list(signals.values())[1:]]
        lines.append(f"| {dataset} | {seeds} | " + " | ".join(cells) + " |")

    k = settings.n_promoted
    picks = {
        (dataset, seed): _picks(
            [r for r in rows if r["dataset"] == dataset and r["seed"] == seed],
            [r for r in runs if r["dataset"] == dataset and r["seed"] == seed],
            k,
        )
        for dataset in datasets
        for seed in sorted({r["seed"] for r in rows if r["dataset"] == dataset})
    }
    rules = list(dict.fromkeys(rule for found in picks.values() for rule in found))
    lines += [
        "",
        f"Under-training: the {k} candidates each rule picks, trained to {settings.epochs} "
        f"epochs. *promoted by* rows are the sets the studies above actually promoted (with "
        "the paper's criterion: the lowest μ); *highest μ* is the other end of that ranking; "
        "*all* is every candidate (its best is the best any rule could reach). Cells: median "
        f"test accuracy of the {k} / best of the {k}, each the median over the runs.",
        "",
        f"| the {k} candidates | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for rule in rules:
        cells = []
        for dataset in datasets:
            found = [v[rule] for (d, _), v in picks.items() if d == dataset and rule in v]
            medians = [float(np.median([r["test_accuracy"] for r in c])) for c in found if c]
            bests = [max(r["test_accuracy"] for r in c) for c in found if c]
            cells.append(
                f"{_fmt(float(np.median(medians)))} / {_fmt(float(np.median(bests)))}"
                if medians
                else "–"
            )
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each run: test accuracy of the candidates at the full budget, their median learning "
        "rate and median one-epoch validation accuracy.",
        "",
        f"| dataset | the {k} candidates | best test accuracy | median test accuracy "
        "| median lr | median one-epoch validation accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (dataset, seed), found in picks.items():
        for rule, chosen in found.items():
            tests = [r["test_accuracy"] for r in chosen]
            if not tests:
                continue
            lines.append(
                f"| {dataset} (seed {seed}) | {rule} | {_fmt(max(tests))} "
                f"| {_fmt(float(np.median(tests)))} "
                f"| {float(np.median([r['lr'] for r in chosen])):.1e} "
                f"| {_fmt(float(np.median([r['valid_accuracy_1'] for r in chosen])))} |"
            )
    return lines


def _picks(
    rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], k: int
) -> dict[str, list[dict[str, Any]]]:
    """The ``k`` candidates of one run each promotion rule picks (rows of :func:`rank_quality`)."""
    by_config = {r["config"]: r for r in rows}
    picks: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run["promoted"]:
            chosen = [by_config[c] for c in run["promoted"] if c in by_config]
            picks[f"promoted by {run['method']}"] = chosen
    for name in _hpo.ESTIMATORS:
        scored = [r for r in rows if math.isfinite(r["mu"][name]) and r["mu"][name] > 0]
        picks[f"highest μ ({name})"] = sorted(scored, key=lambda r: r["mu"][name])[-k:]
    picks["best one-epoch validation accuracy"] = sorted(
        rows, key=lambda r: -r["valid_accuracy_1"]
    )[:k]
    picks["all"] = list(rows)
    return picks


def resampled_table(
    rows: Sequence[dict[str, Any]],
    datasets: Sequence[str],
    settings: Settings,
    searches: int = 2000,
) -> list[str]:
    """Searches resampled from the fully trained candidates of the rank-quality runs.

    Each search draws ``n_screening`` candidates (with replacement) from the problem's pool,
    orders them by a criterion (the library's own ranking code), promotes the first
    ``n_promoted`` and picks the one with the best final validation accuracy; random search
    draws as many candidates as it can train fully with the same epochs and picks likewise.
    Cells: median test accuracy of the pick [2.5 %, 97.5 % quantiles of the median over
    bootstrap replicates of the searches].
    """
    k, n = settings.n_promoted, settings.n_screening
    n_random = math.ceil(settings.budget / settings.epochs)
    criteria = [*_criteria.CRITERIA]
    names = [f"criterion {c!r} ({k} of {n})" for c in criteria] + [
        f"random search ({n_random} full trials)"
    ]
    lines = [
        "| rule | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    cells: dict[str, list[str]] = {name: [] for name in names}
    for dataset in datasets:
        pool = [r for r in rows if r["dataset"] == dataset]
        if len(pool) < n:
            for name in names:
                cells[name].append("–")
            continue
        rng = np.random.default_rng(0)
        draws = rng.integers(0, len(pool), size=(searches, n))
        valid = np.array([r["valid_accuracy"] for r in pool])
        test = np.array([r["test_accuracy"] for r in pool])
        for criterion, name in zip(criteria, names):
            picks = []
            for draw in draws:
                signals = [
                    _criteria.Signals(
                        root=position,
                        mu=pool[index]["mu"]["last_layer"],
                        value=pool[index]["valid_accuracy_1"],
                        train_loss=pool[index].get("train_loss_1"),
                    )
                    for position, index in enumerate(draw)
                    if math.isfinite(pool[index]["mu"]["last_layer"])
                    and pool[index]["mu"]["last_layer"] > 0
                ]
                order = _criteria.rank(signals, criterion, maximize=True)[:k]
                promoted = [draw[r.root] for r in order]
                picks.append(test[max(promoted, key=lambda i: (valid[i], -i))])
            cells[name].append(_median_cell(picks, rng))
        picks = []
        for draw in draws:
            chosen = draw[:n_random]
            picks.append(test[max(chosen, key=lambda i: (valid[i], -i))])
        cells[names[-1]].append(_median_cell(picks, rng))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(cells[name]) + " |")
    return lines


def _median_cell(values: Sequence[float], rng: np.random.Generator) -> str:
    array = np.asarray(values, dtype=float)
    medians = np.median(array[rng.integers(0, len(array), size=(500, len(array)))], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return f"{np.median(array):.3f} [{low:.3f}, {high:.3f}]"


def plot(
    runs: Sequence[dict[str, Any]], datasets: Sequence[str], settings_budget: int, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = math.ceil(len(datasets) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(12, 4.2 * rows), squeeze=False)
    markers = {"convexity": "o", "random": "s", "tpe": "^", "tpe+hyperband": "D", "random+sh": "v"}
    # One colour per criterion (convexity) or per method kind; the marker tells the kind, and
    # a hollow marker the 3x budget.
    keys = [m.criterion if m.kind == "convexity" else m.kind for m in METHODS]
    palette = plt.get_cmap("tab10")
    colours = {key: palette(i) for i, key in enumerate(dict.fromkeys(keys))}
    for index, dataset in enumerate(datasets):
        axis = axes[index // columns][index % columns]
        for number, method in enumerate(METHODS):
            mine = [r for r in runs if r["method"] == method.name and r["dataset"] == dataset]
            if not mine:
                continue
            q1, median, q3 = _quartiles([r["test_accuracy"] for r in mine])
            epochs = float(np.median([r["epochs"] for r in mine]))
            jitter = 0.012 * settings_budget * (number - len(METHODS) / 2)
            axis.errorbar(
                epochs + jitter,
                median,
                yerr=[[median - q1], [q3 - median]],
                fmt=markers[method.kind],
                color=colours[method.criterion if method.kind == "convexity" else method.kind],
                markerfacecolor="none" if method.budget_factor == 3 else None,
                capsize=3,
                label=method.name,
            )
        axis.set_title(dataset)
        axis.set_xlabel("training epochs spent (median over seeds)")
        axis.set_ylabel("test accuracy of the best trial")
        axis.grid(alpha=0.3)
    for index in range(len(datasets), rows * columns):
        axes[index // columns][index % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    figure.suptitle("Test accuracy (median and IQR over seeds) against training epochs spent")
    figure.tight_layout(rect=(0, 0.08, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(
    results: Sequence[dict[str, Any]], settings: Settings, command: str, seconds: float
) -> str:
    runs = [run for result in results for run in result["runs"]]
    rows = [row for result in results for row in result["rank_quality"]]
    datasets = list(settings.datasets)
    compute = sum(result["compute_seconds"] for result in results)
    lines = [
        "# Search quality at equal compute",
        "",
        f"Command: `{command}` (its (problem, seed) jobs took "
        f"{sum(r['seconds'] for r in results) / 60:.0f} process-minutes in all, in "
        f"{settings.workers} worker processes of one thread on {os.cpu_count()} CPU cores; "
        f"{compute / 60:.0f} CPU-min of training and scoring after sharing; torch "
        f"{torch.__version__}, optuna {optuna.__version__}, Python "
        f"{platform.python_version()}).",
        "",
        "Problems:",
        "",
        *(f"- `{name}`: {_hpo.PROBLEMS[name].text}." for name in datasets),
        "",
        "Search spaces:",
        "",
        *(
            f"- {space.upper()}: {text}."
            for space, text in _hpo.SPACE_TEXT.items()
            if any(_hpo.PROBLEMS[name].space == space for name in datasets)
        ),
        "",
        f"Full budget of a trial: {settings.epochs} epochs. Convexity searches: "
        f"{settings.n_screening} screening trials of one epoch, {settings.n_promoted} promoted, "
        f"{settings.budget} epochs in all = the 1x budget. "
        f"{_seed_counts(results, datasets)}. Cells: test accuracy of the study's best trial "
        "(by validation accuracy), median [first quartile, third quartile] over seeds.",
        "",
        "## Headline: test accuracy of the best trial",
        "",
        *headline_table(runs, datasets),
        "",
        "![test accuracy against epochs](hpo_quality.png)",
        "",
        "## Difference to random search",
        "",
        "Test accuracy minus that of random search at the same budget (1x or 3x), in "
        "percentage points, paired by seed: mean [95 % bootstrap CI over seeds, 10,000 "
        "resamples]. `*`: the CI lies above zero; `†`: below zero.",
        "",
        *difference_table(runs, datasets),
        "",
        "## Choosing the default criterion on validation data",
        "",
        "Median over seeds of the *validation* accuracy of each convexity search's best trial "
        "(the default estimator, `last_layer`, where the criterion reads μ), and the mean of "
        "its ranks over the problems. The default is the best mean rank; test accuracy plays "
        "no part in the choice.",
        "",
        *criterion_choice(runs, datasets),
        "",
    ]
    for dataset in datasets:
        lines += [f"## {dataset}", "", *dataset_table(runs, dataset), ""]
    lines += [
        "Wall time: what the study would have taken alone on this machine (its Optuna time "
        "plus the recorded time of each epoch and scoring pass it used; shared trainings are "
        "computed once but charged to every study that uses them).",
        "",
        "## Rank quality and the under-training risk",
        "",
        *rank_tables(rows, runs, datasets, settings),
        "",
        "## Resampled searches",
        "",
        "Every candidate of the rank-quality runs was trained to the full budget, so searches "
        "can be replayed on them many times over: each of 2,000 resampled searches draws "
        f"{settings.n_screening} candidates (with replacement) from a problem's pool, ranks "
        "them by a criterion (the library's own code; μ from `last_layer`), promotes the first "
        f"{settings.n_promoted} and keeps the one with the best final validation accuracy; "
        "random search trains as many whole trials as the same epochs allow. Cells: median "
        "test accuracy of the kept candidate [95 % bootstrap interval of that median]. These "
        "replays reuse a few hundred candidates, so they say how the rules rank, not how "
        "likely a fresh search is to find a model.",
        "",
        *resampled_table(rows, datasets, settings),
        "",
    ]
    return "\n".join(lines)


def _seed_counts(results: Sequence[dict[str, Any]], datasets: Sequence[str]) -> str:
    counts = {
        name: sum(1 for r in results if r["runs"] and r["runs"][0]["dataset"] == name)
        for name in datasets
    }
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} seeds per problem"
    return "Seeds per problem: " + ", ".join(f"{name} {n}" for name, n in counts.items())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about a minute)")
    parser.add_argument("--seeds", type=int, help="seeds per dataset")
    parser.add_argument("--rank-seeds", type=int, help="runs per dataset for rank quality")
    parser.add_argument("--datasets", nargs="+", choices=list(_hpo.DATASETS))
    parser.add_argument("--workers", type=int, help="worker processes (default 2)")
    parser.add_argument(
        "--out", type=Path, help="output directory (default benchmarks/results[/quick])"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only rewrite the report and the plot from a run's hpo_quality.json",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        data = json.loads(args.render.read_text())
        write_report(
            data["results"],
            Settings(**{**data["settings"], "datasets": tuple(data["settings"]["datasets"])}),
            data["command"].strip(),
            data["seconds"],
            args.out or args.render.parent,
        )
        return
    settings = QUICK if args.quick else FULL
    overrides = {
        "seeds": args.seeds,
        "rank_seeds": args.rank_seeds,
        "datasets": tuple(args.datasets) if args.datasets else None,
        "workers": args.workers,
    }
    settings = dataclasses.replace(
        settings, **{key: value for key, value in overrides.items() if value is not None}
    )
    for name in ("seeds", "workers"):
        if getattr(settings, name) < 1:
            parser.error(f"--{name} must be at least 1")
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(
        ["python benchmarks/hpo_quality.py", *(argv if argv is not None else sys.argv[1:])]
    )

    jobs = [(dataset, seed) for seed in range(settings.seeds) for dataset in settings.datasets]
    # Each finished (problem, seed) is kept in out/jobs/, so an interrupted run resumes, and
    # problems run separately are reported together. A kept job is reused only if it was run
    # with the same settings (the number of seeds and the worker count aside).
    jobs_dir = out / "jobs"
    jobs_dir.mkdir(exist_ok=True)
    fingerprint = dataclasses.asdict(
        dataclasses.replace(settings, seeds=0, workers=0, datasets=())
    )
    fingerprint["methods"] = _method_names()
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from a kept job
    results = []
    for dataset, seed in list(jobs):
        kept = jobs_dir / f"{dataset}-{seed}.json"
        if kept.exists():
            data = json.loads(kept.read_text())
            if data.get("fingerprint") == fingerprint:
                results.append(data["result"])
                jobs.remove((dataset, seed))
    slowest = ("mnist1d_cnn", "mnist1d", "mnist1d_noisy", "digits")
    jobs.sort(key=lambda job: slowest.index(job[0]) if job[0] in slowest else len(slowest))
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(settings.workers, mp_context=context) as executor:
        futures = {
            executor.submit(run_job, dataset, seed, settings): (dataset, seed)
            for dataset, seed in jobs
        }
        for done, future in enumerate(as_completed(futures), 1):
            dataset, seed = futures[future]
            result = future.result()
            results.append(result)
            (jobs_dir / f"{dataset}-{seed}.json").write_text(
                json.dumps({"fingerprint": fingerprint, "result": result}, separators=(",", ":"))
            )
            print(
                f"[{done}/{len(jobs)}] {dataset} seed {seed}: {result['seconds']:.0f} s "
                f"({time.perf_counter() - start:.0f} s elapsed)",
                flush=True,
            )
    seconds = time.perf_counter() - start
    results.sort(key=lambda r: (r["runs"][0]["dataset"], r["runs"][0]["seed"]))

    (out / "hpo_quality.json").write_text(
        json.dumps(
            {
                "settings": dataclasses.asdict(settings),
                "command": command,
                "seconds": seconds,
                "results": results,
            },
            separators=(",", ":"),
        )
    )
    write_report(results, settings, command, seconds, out)


def write_report(
    results: Sequence[dict[str, Any]], settings: Settings, command: str, seconds: float, out: Path
) -> None:
    """Write ``hpo_quality.md`` and ``hpo_quality.png`` into ``out`` and print the report."""
    text = report(results, settings, command, seconds)
    (out / "hpo_quality.md").write_text(text)
    plot(
        [run for result in results for run in result["runs"]],
        list(settings.datasets),
        settings.budget,
        out / "hpo_quality.png",
    )
    print(text)
    print(f"\nWrote {out / 'hpo_quality.md'}, hpo_quality.png and hpo_quality.json.")


if __name__ == "__main__":
    main()
