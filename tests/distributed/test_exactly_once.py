"""Many worker processes on one PostgreSQL database or Journal file: each promotion once."""

from __future__ import annotations

from collections import Counter
import random

import optuna
from optuna.trial import TrialState
import pytest

from optuna_convexity import _attrs
from tests.distributed.conftest import new_study
from tests.distributed.conftest import Pool
from tests.distributed.conftest import STATS
from tests.distributed.worker import storage_of
from tests.search.helpers import check_round


REPETITIONS = 20
N_SCREENING, N_PROMOTED = 6, 2


def _count_problems(study: optuna.Study) -> tuple[int, int]:
    """Duplicated ranks (completed more than once) and missing ranks of round 0."""
    promoted = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_PROMOTED
        and t.user_attrs.get(_attrs.ROUND) == 0
    ]
    per_rank = Counter(t.user_attrs[_attrs.RANK] for t in promoted)
    duplicated = sum(count - 1 for count in per_rank.values())
    missing = sum(1 for rank in range(1, N_PROMOTED + 1) if rank not in per_rank)
    return duplicated, missing


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
        duplicated, missing = _count_problems(study)
        STATS["runs"] += 1
        STATS["duplicated_ranks"] += duplicated
        STATS["missing_ranks"] += missing
        assert (duplicated, missing) == (0, 0)
        check_round(study, 0, N_SCREENING, N_PROMOTED)
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]
