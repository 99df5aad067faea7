"""Many worker processes on one PostgreSQL database or Journal file: each promotion once."""

from __future__ import annotations

import random

import optuna
from optuna.trial import TrialState
import pytest

from tests.distributed.conftest import new_study
from tests.distributed.conftest import Pool
from tests.distributed.conftest import STATS
from tests.distributed.faults import count_problems
from tests.distributed.worker import storage_of
from tests.search.helpers import check_round


REPETITIONS = 20
N_SCREENING, N_PROMOTED = 6, 2


@pytest.mark.parametrize("n_workers", [2, 4, 8])
def test_each_promotion_runs_exactly_once(
    pool: Pool, storage_spec: str, n_workers: int, backend: str
) -> None:
    for repetition in range(REPETITIONS):
        storage = storage_spec
        if backend == "journal":  # a new file per repetition
            storage = storage_spec.replace(".journal", f"-{repetition}.journal")
        name = new_study(storage)
        seed = random.Random(f"{backend}-{n_workers}-{repetition}").randrange(1 << 30)
        specs = [
            {
                "storage": storage,
                "study": name,
                "n_screening": N_SCREENING,
                "n_promoted": N_PROMOTED,
                "delay": 0.02,
                "seed": seed + index,
            }
            for index in range(n_workers)
        ]
        pool.run(specs, timeout=120)
        study = optuna.load_study(study_name=name, storage=storage_of({"storage": storage}))
        duplicated, missing = count_problems(study, N_PROMOTED)
        STATS["runs"] += 1
        STATS["duplicated_ranks"] += duplicated
        STATS["missing_ranks"] += missing
        assert (duplicated, missing) == (0, 0)
        check_round(study, 0, N_SCREENING, N_PROMOTED)
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]
