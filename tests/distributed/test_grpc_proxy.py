"""Sixteen worker processes through Optuna's gRPC proxy (``GrpcStorageProxy``) in front of
the PostgreSQL server: each promotion once, and a worker killed mid-trial recovered by the
lease (the proxy has no heartbeat)."""

from __future__ import annotations

from pathlib import Path
import random

import optuna
import pytest

from tests.distributed.conftest import new_study
from tests.distributed.conftest import Pool
from tests.distributed.faults import check_promoted_exactly_once
from tests.distributed.faults import fault_run
from tests.distributed.faults import N_PROMOTED
from tests.distributed.faults import N_SCREENING
from tests.distributed.faults import POLL_INTERVAL
from tests.distributed.worker import storage_of


N_WORKERS = 16
EXACTLY_ONCE_RUNS = 10
FAULT_RUNS = 5


@pytest.mark.timeout(900)
def test_each_promotion_runs_exactly_once_through_the_proxy(
    pool: Pool, grpc_proxy_url: str
) -> None:
    for repetition in range(EXACTLY_ONCE_RUNS):
        name = new_study(grpc_proxy_url)
        seed = random.Random(f"grpc-{repetition}").randrange(1 << 30)
        spec = {
            "storage": grpc_proxy_url,
            "study": name,
            "n_screening": N_SCREENING,
            "n_promoted": N_PROMOTED,
            "delay": 0.02,
            "poll_interval": POLL_INTERVAL,
        }
        pool.run([{**spec, "seed": seed + index} for index in range(N_WORKERS)], timeout=180)
        storage = storage_of({"storage": grpc_proxy_url})
        study = optuna.load_study(study_name=name, storage=storage)
        check_promoted_exactly_once(study, N_SCREENING, N_PROMOTED)
        storage.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("phase", ["screening", "promoted"])
def test_a_killed_worker_is_recovered_through_the_proxy(
    pool: Pool, grpc_proxy_url: str, tmp_path: Path, phase: str
) -> None:
    for _ in range(FAULT_RUNS):
        fault_run(pool, grpc_proxy_url, "gRPC proxy", phase, N_WORKERS, tmp_path)
