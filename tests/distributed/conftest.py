"""Real backends and real processes for the distributed tests.

PostgreSQL: a server whose URL is in ``OPTUNA_CONVEXITY_POSTGRES_URL`` (``.ci/run`` starts a
throwaway cluster on 127.0.0.1 and sets it). Without it the PostgreSQL tests are skipped,
unless ``OPTUNA_CONVEXITY_REQUIRE_POSTGRES=1`` (set by CI), which makes them fail instead.
"""

from __future__ import annotations

from collections.abc import Iterator
import multiprocessing
import os
from pathlib import Path
from typing import Any
import uuid

import optuna
import pytest

from tests.distributed import worker


ROOT = Path(__file__).resolve().parents[2]
POOL_SIZE = 8

#: Counts reported at the end of the session (and quoted in release notes).
STATS: dict[str, int] = {
    "runs": 0,
    "duplicated_ranks": 0,
    "missing_ranks": 0,
    "crash_runs": 0,
    "restart_runs": 0,
}


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("OPTUNA_CONVEXITY_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("OPTUNA_CONVEXITY_REQUIRE_POSTGRES") == "1":
        pytest.fail("OPTUNA_CONVEXITY_POSTGRES_URL is not set, but PostgreSQL tests are required")
    pytest.skip("no PostgreSQL server: set OPTUNA_CONVEXITY_POSTGRES_URL (see .ci/run)")


@pytest.fixture(params=["postgresql", "journal"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_spec(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh place for one study: a PostgreSQL URL or a new journal file."""
    if backend == "postgresql":
        yield request.getfixturevalue("postgres_url")
    else:
        yield str(tmp_path / f"{uuid.uuid4().hex}.journal")


def new_study(storage: str, **kwargs: Any) -> str:
    """Create a study (before any worker starts, so workers only load it)."""
    name = f"distributed-{uuid.uuid4().hex}"
    optuna.create_study(study_name=name, storage=worker.storage_of({"storage": storage}), **kwargs)
    return name


class Pool:
    """Long-lived worker processes (spawned once per session), one task queue each."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.results: Any = context.Queue()
        self.tasks = [context.Queue() for _ in range(size)]
        self.processes = [
            context.Process(target=worker.serve, args=(queue, self.results), daemon=True)
            for queue in self.tasks
        ]
        for process in self.processes:
            process.start()

    def run(self, specs: list[dict[str, Any]], timeout: float) -> None:
        for queue, spec in zip(self.tasks, specs):
            queue.put(spec)
        errors = [self.results.get(timeout=timeout) for _ in specs]
        assert errors == [None] * len(specs), errors

    def close(self) -> None:
        for queue in self.tasks:
            queue.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


@pytest.fixture(scope="session")
def pool() -> Iterator[Pool]:
    workers = Pool(POOL_SIZE)
    yield workers
    workers.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STATS["runs"] or STATS["crash_runs"] or STATS["restart_runs"]:
        terminalreporter.write_line(
            "distributed: {runs} multi-process runs with {duplicated_ranks} duplicated and "
            "{missing_ranks} missing promotions; {crash_runs} crash runs and {restart_runs} "
            "restart runs completed every promotion exactly once".format(**STATS)
        )
