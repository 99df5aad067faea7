"""The lease: liveness of running trials on storages without Optuna's heartbeat."""

from __future__ import annotations

import logging
from pathlib import Path
import pickle
import threading
import time

import optuna
from optuna.trial import TrialState
import pytest

import optuna_convexity
from optuna_convexity import _attrs
from optuna_convexity._lease import Leases
from tests.distributed.conftest import Pool
from tests.distributed.faults import fault_run


def _journal(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lease_interval": 0.0}, "lease_interval must be a positive number of seconds"),
        ({"lease_interval": float("nan")}, "lease_interval must be a positive number"),
        ({"lease_grace_period": -1.0}, "lease_grace_period must be a positive number"),
        ({"lease_grace_period": True}, "lease_grace_period must be a positive number"),
        ({"lease_interval": 10.0, "lease_grace_period": 15.0}, "less than twice lease_interval"),
    ],
)
def test_bad_lease_timings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        optuna_convexity.ConvexitySampler(4, 2, **kwargs)


def test_a_running_trial_holds_a_fresh_lease_until_it_is_told(tmp_path: Path) -> None:
    sampler = optuna_convexity.ConvexitySampler(4, 2, lease_interval=0.1, lease_grace_period=0.5)
    study = optuna.create_study(storage=_journal(tmp_path / "s.journal"), sampler=sampler)
    trial = study.ask()
    leases = []
    for _ in range(3):
        leases.append(study._storage.get_trial_system_attrs(trial._trial_id)[_attrs.LEASE])
        time.sleep(0.25)
    assert len(set(leases)) == 3  # refreshed by the lease thread
    thread = sampler._leases._held[trial._trial_id].thread
    assert thread.daemon and thread.is_alive()
    study.tell(trial, state=TrialState.PRUNED)
    assert not thread.is_alive() and not sampler._leases._held  # stopped when told
    # The sampler still pickles (e.g. for DDP spawn), without its threads.
    assert pickle.loads(pickle.dumps(sampler))._leases.grace_period == 0.5


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_no_lease_on_storages_with_a_heartbeat_or_in_memory(tmp_path: Path) -> None:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'heartbeat.db'}", heartbeat_interval=30
    )
    for where in (storage, None):
        study = optuna.create_study(storage=where, sampler=optuna_convexity.ConvexitySampler(4, 2))
        trial = study.ask()
        assert _attrs.LEASE not in study._storage.get_trial_system_attrs(trial._trial_id)
        study.tell(trial, state=TrialState.FAIL)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_stale_lease_is_failed_by_exactly_one_worker_and_requeued(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "stale.journal"
    sampler = optuna_convexity.ConvexitySampler(4, 2, lease_interval=0.1, lease_grace_period=0.5)
    study = optuna.create_study(storage=_journal(path), sampler=sampler)
    dead = study.ask()
    dead.suggest_float("x", 0.0, 1.0)
    sampler._leases.release(dead)  # its worker dies: nobody refreshes the lease any more
    # A trial of a process without the sampler holds no lease: it is never failed.
    foreign = optuna.load_study(study_name=study.study_name, storage=_journal(path)).ask()
    # Eight other workers, each with its own storage object, look at the same trial.
    workers = [(Leases(0.1, 0.5), _journal(path)) for _ in range(8)]
    won: list[list[int]] = []

    def observe(leases: Leases, storage: optuna.storages.JournalStorage) -> None:
        other = optuna.load_study(study_name=study.study_name, storage=storage)
        for _ in range(12):
            read_at = time.monotonic()
            trials = storage.get_all_trials(other._study_id)
            won.append(leases.recover_stale(other, trials, read_at))
            time.sleep(0.1)

    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="optuna_convexity"):
            threads = [threading.Thread(target=observe, args=worker) for worker in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        optuna.logging.disable_propagation()
    assert sorted(n for numbers in won for n in numbers) == [dead.number]  # one winner
    trials = study.get_trials(deepcopy=False)
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[foreign.number].state == TrialState.RUNNING
    (retry,) = trials[foreign.number + 1 :]
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == dead.number
    assert retry.system_attrs["retry_history"] == [dead.number]
    assert retry.params == trials[dead.number].params
    assert retry.user_attrs[_attrs.PHASE] == _attrs.PHASE_SCREENING
    assert _attrs.LEASE not in retry.system_attrs  # not the dead worker's lease
    (warning,) = [r.getMessage() for r in caplog.records if "lease" in r.getMessage()]
    assert f"Trial {dead.number} (screening" in warning
    assert "failed and queued again" in warning
    # The retry is screened again as the same candidate, by the next trial asked for.
    again = study.ask()
    assert again.number == retry.number
    assert again.params == trials[dead.number].params


@pytest.mark.parametrize("phase", ["screening", "promoted"])
def test_a_killed_worker_is_recovered_on_a_journal_file(
    pool: Pool, tmp_path: Path, phase: str
) -> None:
    """No heartbeat, no person: the other workers recover the killed worker's trial."""
    fault_run(pool, str(tmp_path / f"{phase}.journal"), "Journal", phase, 8, tmp_path)
