"""Worker processes for the distributed tests.

As a script (``python -m tests.distributed.worker SPEC``, SPEC a JSON object) it runs one
worker and exits: the crash and restart tests kill such processes. :func:`serve` is the loop
of a long-lived pool process that runs one worker per task it receives, so that hundreds of
short runs do not each pay Python's and PyTorch's start-up.
"""

from __future__ import annotations

import json
import multiprocessing.queues
import os
from pathlib import Path
import random
import sys
import time
import traceback
from typing import Any
import warnings

import optuna
from optuna.study import MaxTrialsCallback

import optuna_convexity
from tests.search.helpers import synthetic_mu


def storage_of(spec: dict[str, Any]) -> Any:
    """An Optuna storage from a JSON-able description (``grpc://HOST:PORT``: Optuna's gRPC
    proxy)."""
    if spec["storage"].startswith("grpc://"):
        host, port = spec["storage"][len("grpc://") :].rsplit(":", 1)
        with warnings.catch_warnings():  # experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    if spec["storage"].endswith(".journal"):
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(spec["storage"])
        )
    if spec.get("heartbeat"):
        return optuna.storages.RDBStorage(
            spec["storage"],
            heartbeat_interval=1,
            grace_period=6,  # generous: CI machines are small and busy
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
        )
    return spec["storage"]


def _objective(spec: dict[str, Any]) -> Any:
    rng = random.Random(spec.get("seed"))
    delay = float(spec.get("delay", 0.02))
    # Roles of round 0 that hang once (the first trial to play the role, a retry or a copy
    # included, hangs; later ones do not) until the test stops the worker, e.g.
    # [["screening", 2]] or [["promoted", 1], ["promoted", 2]]; each hanging trial appends
    # "NUMBER PID ROLE" to the marker file.
    hang_at = spec.get("hang_at", [])
    marker = spec.get("marker")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        y = trial.suggest_int("y", 0, 9)
        time.sleep(rng.uniform(0.0, delay))
        screening = optuna_convexity.is_screening(trial)
        position = trial.user_attrs.get("convexity:slot" if screening else "convexity:rank")
        role = [("screening" if screening else "promoted"), position]
        if role in hang_at and trial.user_attrs.get("convexity:round") == 0:
            key = f"{role[0]}:{role[1]}"
            hung = Path(marker).read_text().split() if Path(marker).exists() else []
            if key not in hung:  # the retry must not hang again
                with open(marker, "a") as hanging:
                    hanging.write(f"{trial.number} {os.getpid()} {key}\n")
                time.sleep(3600)  # stopped here
        for epoch in range(3):
            if screening:
                optuna_convexity.record_mu(trial, synthetic_mu(trial.params))
            trial.report(x + epoch, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            time.sleep(rng.uniform(0.0, delay))
        return x**2 + y

    return objective


class _StopWhenRoundZeroIsPromoted:
    """Stop the worker once every promotion of round 0 has completed (retries included)."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        rounds = optuna_convexity.summarize(study)
        if not rounds or not rounds[0].screening_done:
            return
        done = {p.rank for p in rounds[0].promotions if p.state.name == "COMPLETE"}
        expected = study.sampler.n_promoted - len(rounds[0].unfilled_ranks)  # type: ignore[attr-defined]
        if len(done) >= expected:
            study.stop()


def run(spec: dict[str, Any]) -> None:
    """One worker: join the study and optimise until round 0 is promoted (synchronous
    search) or the study holds ``total`` trials (asynchronous search)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=spec["study"],
        storage=storage_of(spec),
        sampler=optuna_convexity.ConvexitySampler(
            spec["n_screening"],
            spec["n_promoted"],
            poll_interval=tuple(spec.get("poll_interval", (0.05, 0.5))),
            asynchronous=spec.get("asynchronous", False),
            **spec.get("lease", {}),  # lease_interval, lease_grace_period
        ),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    stop: Any = (
        MaxTrialsCallback(spec["total"], states=None)
        if spec.get("asynchronous")
        else _StopWhenRoundZeroIsPromoted()
    )
    # A test that hangs should fail instead; the rounds after round 0 run on while a dead
    # worker's trial waits out its lease grace period, so the net leaves room for them.
    safety_net = MaxTrialsCallback(400, states=None)
    study.optimize(_objective(spec), callbacks=[stop, safety_net], catch=(RuntimeError,))
    if isinstance(study._storage, optuna.storages.GrpcStorageProxy):
        study._storage.close()


def serve(tasks: multiprocessing.queues.Queue, results: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    """Run one worker per task until a ``None`` task arrives; report errors, never die."""
    while True:
        spec = tasks.get()
        if spec is None:
            return
        try:
            run(spec)
            results.put(None)
        except BaseException:  # report to the test, which fails
            results.put(traceback.format_exc(limit=-6))


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
