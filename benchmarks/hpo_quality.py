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
from scipy.stats import spearmanr
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))

import _hpo

import optuna_convexity


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
    datasets=tuple(_hpo.DATASETS),
    seeds=10,
    rank_seeds=3,
    n_screening=50,
    n_promoted=10,
    epochs=20,
    workers=2,
)
QUICK = dataclasses.replace(FULL, seeds=2, rank_seeds=1, n_screening=12, n_promoted=3, epochs=4)


@dataclasses.dataclass(frozen=True)
class Method:
    """One search method and its budget."""

    kind: str  # "convexity", "random", "tpe" or "tpe+hyperband"
    estimator: str | None = None
    criterion: str = "mu"
    budget_factor: int = 1

    @property
    def name(self) -> str:
        if self.kind == "convexity":
            suffix = ", better half" if self.criterion == "mu_in_better_half" else ""
            return f"convexity[{self.estimator}{suffix}]"
        return f"{self.kind} {self.budget_factor}x"


METHODS = (
    *(
        Method("convexity", estimator, criterion)
        for criterion in ("mu", "mu_in_better_half")
        for estimator in _hpo.ESTIMATORS
    ),
    *(
        Method(kind, budget_factor=factor)
        for factor in (1, 3)
        for kind in ("random", "tpe", "tpe+hyperband")
    ),
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
        training = pool.get(_hpo.suggest_config(trial))
        if optuna_convexity.is_screening(trial):
            first = training.screen()
            meter.epochs += 1
            score = training.scores[estimator]
            meter.seconds += first.seconds + score.seconds
            optuna_convexity.record_mu(trial, score.mu, estimator=estimator)
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
        _hpo.Config(**t.params).key() for t in study.trials if optuna_convexity.is_promoted(t)
    ]
    return _outcome(study, method, pool, settings.budget, meter, wall, promoted)


def run_standard(method: Method, pool: _hpo.TrainingPool, settings: Settings) -> Run:
    budget = settings.budget * method.budget_factor
    meter = _Meter()

    def objective(trial: optuna.Trial) -> float:
        training = pool.get(_hpo.suggest_config(trial))
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
    if method.kind == "random":
        sampler = optuna.samplers.RandomSampler(seed=pool.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=pool.seed)
    if method.kind == "tpe+hyperband":
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=settings.epochs, reduction_factor=3
        )
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


def _mean_rho(rows: Sequence[dict[str, Any]], score: Callable[[dict[str, Any]], float]) -> str:
    """Spearman's rho of ``score`` against the final test accuracy, averaged over runs."""
    rhos = [
        _spearman(
            [score(r) for r in rows if r["seed"] == seed],
            [r["test_accuracy"] for r in rows if r["seed"] == seed],
        )
        for seed in sorted({r["seed"] for r in rows})
    ]
    return _fmt(float(np.mean(rhos)) if rhos else math.nan, 2)


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
    lines = [
        "Spearman's ρ between a one-epoch score and the test accuracy the candidate reaches "
        f"after {settings.epochs} epochs ({settings.n_screening} candidates per run). The "
        "paper's premise predicts a *negative* ρ for μ (flatter = better); the cheap baseline, "
        "one-epoch validation accuracy, should be positive.",
        "",
        "| dataset | runs | "
        + " | ".join(f"ρ(μ {name})" for name in _hpo.ESTIMATORS)
        + " | ρ(one-epoch validation accuracy) |",
        "|---|---:|" + "---:|" * (len(_hpo.ESTIMATORS) + 1),
    ]
    for dataset in datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        seeds = len({r["seed"] for r in mine})
        cells = [_mean_rho(mine, lambda r, name=name: r["mu"][name]) for name in _hpo.ESTIMATORS]
        cells.append(_mean_rho(mine, lambda r: r["valid_accuracy_1"]))
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


def plot(
    runs: Sequence[dict[str, Any]], datasets: Sequence[str], settings_budget: int, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = math.ceil(len(datasets) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(12, 4.2 * rows), squeeze=False)
    markers = {"convexity": "o", "random": "s", "tpe": "^", "tpe+hyperband": "D"}
    keys = [m.estimator or m.kind for m in METHODS]
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
                color=colours[method.estimator or method.kind],
                markerfacecolor="none" if method.criterion == "mu_in_better_half" else None,
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
        f"Command: `{command}` ({seconds / 60:.1f} min on {os.cpu_count()} CPU cores, "
        f"{settings.workers} worker processes of one thread; torch {torch.__version__}, "
        f"optuna {optuna.__version__}, Python {platform.python_version()}; "
        f"{compute / 60:.1f} CPU-min of training and scoring after sharing).",
        "",
        f"Search space: {_hpo.SEARCH_SPACE_TEXT}. Full budget of a trial: {settings.epochs} "
        f"epochs. Convexity searches: {settings.n_screening} screening trials of one epoch, "
        f"{settings.n_promoted} promoted, {settings.budget} epochs in all = the 1x budget. "
        f"{settings.seeds} seeds per dataset. Cells: test accuracy of the study's best trial "
        "(by validation accuracy), median [first quartile, third quartile] over seeds.",
        "",
        "## Headline: test accuracy of the best trial",
        "",
        *headline_table(runs, datasets),
        "",
        "![test accuracy against epochs](hpo_quality.png)",
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
    ]
    return "\n".join(lines)


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
    jobs.sort(key=lambda job: job[0] != "digits")  # the longest first
    start = time.perf_counter()
    results = []
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
