"""A worker process for the restart tests: ``python -m tests.search.worker STORAGE N_TRIALS``."""

from __future__ import annotations

import functools
import sys

import optuna

import optuna_convexity
from tests.search.helpers import objective


def main() -> None:
    storage, n_trials = sys.argv[1], int(sys.argv[2])
    if storage.endswith(".journal"):
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage)
        )
    study = optuna.create_study(
        study_name="restart",
        storage=storage,
        load_if_exists=True,
        sampler=optuna_convexity.ConvexitySampler(6, 2, poll_interval=(0.05, 0.2)),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(functools.partial(objective, sleep=0.0), n_trials=n_trials)


if __name__ == "__main__":
    main()
