"""One worker of a distributed convexity search: run as many of these as you like.

Every worker runs this same script against one shared storage; the storage decides what each
trial does (screening or promotion), so workers need no other coordination. Start them on one
machine or many, at any time; stop and restart them as you please.

    # a PostgreSQL server (recommended for many workers), with Optuna's heartbeat; the URL
    # holds a password, so it comes from the environment, not the command line:
    read -rsp "Storage URL: " OPTUNA_STORAGE && export OPTUNA_STORAGE
    python examples/distributed/worker.py
    # or a Journal file on a shared file system (no server; no heartbeat):
    python examples/distributed/worker.py --storage journal:search.log

See launcher.py to start several workers on this machine.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import re
import sys

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
import torch

import optuna_convexity


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quickstart import load_data
from quickstart import make_objective


#: The storage when neither ``--storage`` nor ``OPTUNA_STORAGE`` names one.
DEFAULT_STORAGE = "journal:distributed-search.log"


def warn_if_password_on_command_line(spec: str) -> None:
    """Say so when ``--storage`` was given a URL with a password on the command line."""
    if spec == os.environ.get("OPTUNA_STORAGE") or not re.search(r"://[^/@]*:[^/@]+@", spec):
        return
    print(
        "Warning: --storage carries a password, which every process on this machine can read "
        "(/proc/PID/cmdline) and your shell keeps in its history. Put the URL in the "
        "OPTUNA_STORAGE environment variable instead, e.g. "
        'read -rsp "Storage URL: " OPTUNA_STORAGE && export OPTUNA_STORAGE',
        file=sys.stderr,
    )


def make_storage(spec: str) -> optuna.storages.BaseStorage | str:
    """``journal:<path>`` for a Journal file, anything else is an SQLAlchemy URL."""
    if spec.startswith("journal:"):
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(spec[len("journal:") :])
        )
    if spec.startswith("sqlite"):
        return spec  # one process at a time only: SQLite cannot lock rows
    # Heartbeat: a worker that dies mid-trial has its trial failed after `grace_period`
    # seconds, and the retry callback queues a copy (a promotion keeps its rank and parent).
    return optuna.storages.RDBStorage(
        spec,
        heartbeat_interval=30,
        grace_period=90,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--storage",
        default=os.environ.get("OPTUNA_STORAGE", DEFAULT_STORAGE),
        help=f"a Journal file (journal:<path>) or a database URL; default: $OPTUNA_STORAGE, "
        f"else {DEFAULT_STORAGE}. A URL with a password belongs in OPTUNA_STORAGE instead",
    )
    parser.add_argument("--study-name", default="distributed")
    parser.add_argument("--n-screening", type=int, default=50)
    parser.add_argument("--n-promoted", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="rounds in the whole study")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--asynchronous", action="store_true")
    parser.add_argument(
        "--progress-line",
        type=int,
        default=None,
        help="the terminal line of this worker's progress",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of this worker (default: torch's, one per core; with several "
        "workers on one machine, give each its share of the cores, as launcher.py does)",
    )
    args = parser.parse_args()
    warn_if_password_on_command_line(args.storage)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=args.study_name,
        storage=make_storage(args.storage),
        load_if_exists=True,  # every worker runs this line; the first one creates the study
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(
            args.n_screening, args.n_promoted, asynchronous=args.asynchronous
        ),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    # The whole study, not each worker, stops after its budget of trials.
    budget = args.rounds * (args.n_screening + args.n_promoted)
    study.optimize(
        make_objective(load_data(), args.epochs),
        callbacks=[
            MaxTrialsCallback(budget, states=None),
            optuna_convexity.ProgressCallback(position=args.progress_line),
        ],
    )


if __name__ == "__main__":
    main()
