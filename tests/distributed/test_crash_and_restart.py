"""Workers killed mid-trial, and every worker stopped and started again."""

from __future__ import annotations

from collections.abc import Callable
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

import optuna_convexity
from optuna_convexity import _attrs
from tests.distributed.conftest import FAULTS
from tests.distributed.conftest import new_study
from tests.distributed.conftest import Pool
from tests.distributed.conftest import ROOT
from tests.distributed.conftest import STATS
from tests.distributed.faults import hanging
from tests.distributed.worker import storage_of
from tests.search.helpers import check_round


N_SCREENING, N_PROMOTED = 6, 2


def _spawn(spec: dict[str, Any], log: Path | None = None) -> subprocess.Popen[bytes]:
    output = open(log, "wb") if log is not None else None
    return subprocess.Popen(
        [sys.executable, "-m", "tests.distributed.worker", json.dumps(spec)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
    )


def _wait_for(
    condition: Callable[[], bool],
    what: str,
    timeout: float = 120.0,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            output = log.read_text() if log is not None and log.exists() else ""
            raise AssertionError(
                f"the worker exited ({process.returncode}) before {what}:\n{output[-4000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _spec(storage: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "storage": storage,
        "study": name,
        "n_screening": N_SCREENING,
        "n_promoted": N_PROMOTED,
        "delay": 0.05,
        "heartbeat": True,
        **extra,
    }


def _load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_of({"storage": storage}))


@pytest.mark.parametrize("phase", ["screening", "promoted"])
def test_killed_worker_is_recovered_by_heartbeat(
    postgres_url: str, pool: Pool, tmp_path: Path, phase: str
) -> None:
    name = new_study(postgres_url)
    marker = tmp_path / "hanging"
    position = 2 if phase == "screening" else 1
    log = tmp_path / "victim.log"
    spec = _spec(postgres_url, name, hang_at=[[phase, position]], marker=str(marker))
    victim = _spawn(spec, log)
    try:
        _wait_for(marker.exists, f"the victim to hang in its {phase} trial", 120, victim, log)
        ((killed, _),) = hanging(marker, 1, timeout=30)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    FAULTS["PostgreSQL"][0] += 1
    # Two healthy workers finish the study: Optuna's heartbeat fails the dead trial and its
    # retry callback queues a copy, which one of them runs.
    pool.run([_spec(postgres_url, name, seed=i) for i in range(2)], timeout=180)
    study = _load(postgres_url, name)
    assert study.trials[killed].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retries and retries[-1].state in (TrialState.PRUNED, TrialState.COMPLETE)
    retry = retries[-1]
    if phase == "promoted":
        original = study.trials[killed]
        for key in (_attrs.PHASE, _attrs.RANK, _attrs.PARENT, _attrs.ROUND):
            assert retry.user_attrs[key] == original.user_attrs[key]
        assert retry.params == original.params
        assert retry.state == TrialState.COMPLETE
    else:
        assert retry.user_attrs[_attrs.SCORED_BY] == retry.number  # scored again, itself
    check_round(study, 0, N_SCREENING, N_PROMOTED)
    STATS["crash_runs"] += 1
    FAULTS["PostgreSQL"][1] += 1


def _stop_all(workers: list[subprocess.Popen[bytes]], sig: int) -> None:
    for process in workers:
        if process.poll() is None:
            process.send_signal(sig)
    for process in workers:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Three rounds of starting and stopping three worker processes (each imports torch): about 20 s
# on a quiet 2-core machine, but over 300 s was seen under heavy load, so the hang guard is wider.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["postgresql", "journal"], indirect=True)
def test_stopping_every_worker_and_starting_again_continues(
    backend: str, storage_spec: str, tmp_path: Path
) -> None:
    """Stop all workers mid-screening, then mid-promotion; the same script resumes.

    The workers are stopped while they are known to be inside those trials: screening slots
    3 to 5, then both promotions, hang in their objective until the workers are stopped (a
    poll for a running promotion could miss a promotion that finished between two reads of
    a busy machine, and then waited for one that never came).

    PostgreSQL with heartbeat: workers are killed (SIGKILL), the heartbeat fails their trials
    and the retry callback requeues them. Journal storage has no heartbeat: workers are
    interrupted (SIGINT, like Ctrl-C), Optuna fails the running trials, failed promotions
    are requeued, and before each restart the operator runs the documented
    ``fail_running_trials`` for trials interrupted inside ``study.ask()``.
    """
    heartbeat = backend == "postgresql"
    sig = signal.SIGKILL if heartbeat else signal.SIGINT
    name = new_study(storage_spec)
    spec = _spec(storage_spec, name, heartbeat=heartbeat, delay=0.2)

    def start_and_stop_when_hanging(seed: int, roles: list[list[Any]], what: str) -> None:
        """Start three workers, and stop them once ``roles`` hang in their objective."""
        marker = tmp_path / f"hanging-{roles[0][0]}"
        hang = {"hang_at": roles, "marker": str(marker)}
        workers = [_spawn({**spec, **hang, "seed": seed + i}) for i in range(3)]
        try:
            deadline = time.monotonic() + 180
            while len(marker.read_text().splitlines() if marker.exists() else []) < len(roles):
                exited = [p.returncode for p in workers if p.poll() is not None]
                assert not exited, f"workers exited ({exited}) before {what}"
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.2)
            hanging(marker, len(roles), timeout=30)
        finally:
            _stop_all(workers, sig)

    def recover() -> None:  # what the README tells users of storages without heartbeat
        if not heartbeat:
            study = optuna.load_study(
                study_name=name,
                storage=storage_of({"storage": storage_spec}),
                sampler=optuna_convexity.ConvexitySampler(N_SCREENING, N_PROMOTED),
            )
            optuna_convexity.fail_running_trials(study)

    screening = [["screening", 3], ["screening", 4], ["screening", 5]]
    start_and_stop_when_hanging(0, screening, "three screening trials to run")
    recover()
    before = {t.number: t.state for t in _load(storage_spec, name).trials if t.state.is_finished()}

    start_and_stop_when_hanging(10, [["promoted", 1], ["promoted", 2]], "both promotions to run")
    recover()

    workers = [_spawn({**spec, "seed": 20 + i}) for i in range(3)]
    for process in workers:
        process.wait(timeout=240)
    assert [p.returncode for p in workers] == [0, 0, 0]

    study = _load(storage_spec, name)
    # Finished trials were never run again: their states are unchanged and no retry of a
    # finished trial exists.
    for number, state in before.items():
        assert study.trials[number].state == state
    retried = {
        t.system_attrs["failed_trial"] for t in study.trials if "failed_trial" in t.system_attrs
    }
    assert not retried & {n for n, s in before.items() if s != TrialState.FAIL}
    check_round(study, 0, N_SCREENING, N_PROMOTED)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    STATS["restart_runs"] += 1
