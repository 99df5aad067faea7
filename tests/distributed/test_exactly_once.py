"""Many worker processes on one PostgreSQL database or Journal file: each promotion once."""

from __future__ import annotations

import random

import optuna
import pytest

from tests.distributed.conftest import new_study
from tests.distributed.conftest import Pool
from tests.distributed.faults import check_promoted_exactly_once
from tests.distributed.worker import storage_of


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
        check_promoted_exactly_once(study, N_SCREENING, N_PROMOTED)
