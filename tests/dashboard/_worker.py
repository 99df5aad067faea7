"""A worker process of a search shared through one database.

``python -m tests.dashboard._worker STORAGE N_TRIALS N_SCREENING N_PROMOTED``
"""

from __future__ import annotations

import random
import sys
import time

import optuna

from tests.dashboard._search import synthetic_objective
from tests.dashboard._search import synthetic_study


def main() -> None:
    storage, n_trials, n_screening, n_promoted = sys.argv[1], *map(int, sys.argv[2:5])
    study = synthetic_study(storage, n_screening, n_promoted, seed=None)

    def objective(trial: optuna.Trial) -> float:
        time.sleep(random.uniform(0.0, 0.02))  # let the two workers' trials interleave
        return synthetic_objective(trial)

    study.optimize(objective, n_trials=n_trials)


if __name__ == "__main__":
    main()
