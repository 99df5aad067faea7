"""Throughput of the distributed example: trials per minute with 1, 2 and 4 workers.

Runs ``examples/distributed/launcher.py`` as a user would, on a fresh Journal file each time,
for the same search (by default the quickstart's: 50 screening trials of one epoch, 10
promoted trials of 30 epochs, MLPs on scikit-learn's digits), and times it from the launch to
the last worker's exit (process start-up and imports included). Two thread settings:

- ``shared`` (the launcher's default): each worker gets its share of the usable cores as
  torch threads;
- ``all cores``: every worker gets as many torch threads as there are cores (torch's own
  default, and what each worker did before the launcher divided them).

The configurations are interleaved, one repeat of each at a time, so that a change in the
machine's load hits them alike; the load average is printed before and after. Candidates are
sampled at random, so runs differ in the configurations they train: the table gives the median
and the range over the repeats.

    python benchmarks/workers_throughput.py              # 1, 2, 4 workers, 3 repeats
    python benchmarks/workers_throughput.py --quick      # a small search, for the tests
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import optuna


LAUNCHER = Path(__file__).resolve().parents[1] / "examples" / "distributed" / "launcher.py"


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load() -> str:
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def run_once(workers: int, threads: int, search: list[str], directory: Path) -> float:
    """Trials per minute of one launch of the distributed example (printed as it ends)."""
    log = directory / f"search-{workers}-{threads}-{time.monotonic_ns()}.log"
    command = [
        sys.executable,
        str(LAUNCHER),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--storage",
        f"journal:{log}",
        "--study-name",
        "throughput",
        *search,
    ]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
    study = optuna.load_study(study_name="throughput", storage=storage)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    rate = 60.0 * len(finished) / seconds
    print(
        f"  {workers} workers x {threads} threads: {len(finished)} trials in {seconds:.1f} s, "
        f"{rate:.1f} trials per minute (load average now {load()})",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-screening", type=int, default=50)
    parser.add_argument("--n-promoted", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30, help="full budget of promoted trials")
    parser.add_argument("--quick", action="store_true", help="a small search, 1 and 2 workers")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.repeats = [1, 2], 1
        args.n_screening, args.n_promoted, args.epochs = 6, 2, 2

    cores = usable_cores()
    search = [
        "--n-screening",
        str(args.n_screening),
        "--n-promoted",
        str(args.n_promoted),
        "--epochs",
        str(args.epochs),
    ]
    settings = [("shared", lambda w: max(1, cores // w)), ("all cores", lambda w: cores)]
    configurations: list[tuple[int, str, int]] = []
    for workers in args.workers:
        for name, threads in settings:  # one worker: both settings give it every core
            if not any(c[0] == workers and c[2] == threads(workers) for c in configurations):
                configurations.append((workers, name, threads(workers)))
    print(
        f"{args.n_screening} screening + {args.n_promoted} promoted trials ({args.epochs} "
        f"epochs), {args.repeats} repeats; {cores} usable cores; Python "
        f"{platform.python_version()}, optuna {optuna.__version__}"
    )
    print(f"load average (1, 5, 15 min) before: {load()}", flush=True)
    rates: dict[tuple[int, str, int], list[float]] = {c: [] for c in configurations}
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(args.repeats):
            for configuration in configurations:
                workers, _name, threads = configuration
                rates[configuration].append(run_once(workers, threads, search, Path(directory)))
    print(f"load average (1, 5, 15 min) after: {load()}")
    print()
    print("| workers | torch threads per worker | trials per minute: median [min, max] |")
    print("|---:|:---|:---|")
    for (workers, name, threads), values in rates.items():
        print(
            f"| {workers} | {threads} ({name}) | {statistics.median(values):.1f} "
            f"[{min(values):.1f}, {max(values):.1f}] |"
        )


if __name__ == "__main__":
    main()
