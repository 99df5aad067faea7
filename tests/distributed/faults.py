"""A fault run: a pool of workers runs a study, one of them is SIGKILLed in the middle of a
screening or of a promoted trial, and the others must finish the round with no manual step."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
import time
from typing import Any
import uuid

import optuna
from optuna.trial import TrialState

from optuna_convexity import _attrs
from tests.distributed.conftest import FAULTS
from tests.distributed.conftest import new_study
from tests.distributed.conftest import Pool
from tests.distributed.conftest import STATS
from tests.distributed.worker import storage_of
from tests.search.helpers import check_round


N_SCREENING, N_PROMOTED = 4, 2
#: Short lease timings: a dead worker's trial is recovered about eight seconds after it died
#: (a lease write can take seconds on a busy machine, so the grace period is eight intervals).
LEASE = {"lease_interval": 1.0, "lease_grace_period": 8.0}
#: Sixteen workers waiting for the screening read the storage at most once a second each.
POLL_INTERVAL = (0.2, 1.0)


def count_problems(study: optuna.Study, n_promoted: int) -> tuple[int, int]:
    """Duplicated ranks (completed more than once) and missing ranks of round 0."""
    promoted = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_PROMOTED
        and t.user_attrs.get(_attrs.ROUND) == 0
    ]
    per_rank = Counter(t.user_attrs[_attrs.RANK] for t in promoted)
    duplicated = sum(count - 1 for count in per_rank.values())
    missing = sum(1 for rank in range(1, n_promoted + 1) if rank not in per_rank)
    return duplicated, missing


def check_promoted_exactly_once(study: optuna.Study, n_screening: int, n_promoted: int) -> None:
    """Round 0 of a finished multi-process run: every rank completed exactly once (counted in
    the session's summary line), the round is consistent, and no trial is left running."""
    duplicated, missing = count_problems(study, n_promoted)
    STATS["runs"] += 1
    STATS["duplicated_ranks"] += duplicated
    STATS["missing_ranks"] += missing
    assert (duplicated, missing) == (0, 0)
    check_round(study, 0, n_screening, n_promoted)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def hanging(marker: Path, count: int, timeout: float) -> list[tuple[int, int]]:
    """Wait until ``count`` trials hang (see the worker's ``hang_at``): their numbers and the
    process ids of their workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = marker.read_text() if marker.exists() else ""
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
        if len(lines) >= count:
            return [(int(n), int(pid)) for n, pid, _ in (line.split() for line in lines)]
        time.sleep(0.05)
    raise AssertionError(f"{count} trials did not reach the point where they hang in {timeout} s")


def fault_run(
    pool: Pool, storage: str, backend: str, phase: str, n_workers: int, tmp_path: Path
) -> None:
    """Kill the worker of round 0's screening slot 2 or promotion rank 1 while ``n_workers``
    run the study; the others recover it through the lease and finish round 0."""
    name = new_study(storage)
    marker = tmp_path / f"hanging-{uuid.uuid4().hex}"
    position = 2 if phase == "screening" else 1
    spec: dict[str, Any] = {
        "storage": storage,
        "study": name,
        "n_screening": N_SCREENING,
        "n_promoted": N_PROMOTED,
        "delay": 0.1,
        "hang_at": [[phase, position]],
        "marker": str(marker),
        "lease": LEASE,
        "poll_interval": POLL_INTERVAL,
    }
    pool.submit([{**spec, "seed": index} for index in range(n_workers)])
    ((killed, pid),) = hanging(marker, 1, timeout=120)
    pool.kill(pid)
    FAULTS[backend][0] += 1
    pool.collect(n_workers - 1, timeout=240)

    study = optuna.load_study(study_name=name, storage=storage_of({"storage": storage}))
    trials = study.get_trials(deepcopy=False)
    assert trials[killed].state == TrialState.FAIL
    # Exactly one worker won the fail: the killed trial has one retry, which finished.
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.system_attrs["retry_history"] == [killed]
    if phase == "promoted":
        original = trials[killed]
        for key in (_attrs.PHASE, _attrs.RANK, _attrs.PARENT, _attrs.ROUND):
            assert retry.user_attrs[key] == original.user_attrs[key]
        assert retry.params == original.params
        assert retry.state == TrialState.COMPLETE
    else:
        assert retry.state == TrialState.PRUNED
        assert retry.user_attrs[_attrs.SCORED_BY] == retry.number  # screened again, itself
        assert retry.params == trials[killed].params
    check_round(study, 0, N_SCREENING, N_PROMOTED)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    if isinstance(study._storage, optuna.storages.GrpcStorageProxy):
        study._storage.close()
    FAULTS[backend][1] += 1
