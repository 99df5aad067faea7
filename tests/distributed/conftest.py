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
import signal
import socket
import subprocess
import sys
import textwrap
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
#: Workers killed mid-trial (SIGKILL), per backend: [runs, runs recovered with no manual step].
FAULTS: dict[str, list[int]] = {"Journal": [0, 0], "PostgreSQL": [0, 0], "gRPC proxy": [0, 0]}


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
        self._context = multiprocessing.get_context("spawn")
        self.results: Any = self._context.Queue()
        self.tasks: list[Any] = []
        self.processes: list[Any] = []
        self.grow(size)

    def _start(self, queue: Any) -> Any:
        process = self._context.Process(
            target=worker.serve, args=(queue, self.results), daemon=True
        )
        process.start()
        return process

    def grow(self, size: int) -> None:
        """Have at least ``size`` processes (the new ones are spawned now)."""
        while len(self.tasks) < size:
            queue = self._context.Queue()
            self.tasks.append(queue)
            self.processes.append(self._start(queue))

    def submit(self, specs: list[dict[str, Any]]) -> None:
        """Give the first ``len(specs)`` processes one worker run each."""
        self.grow(len(specs))
        for queue, spec in zip(self.tasks, specs):
            queue.put(spec)

    def collect(self, count: int, timeout: float) -> None:
        """Wait for ``count`` runs to end, and fail on any error they reported."""
        errors = [self.results.get(timeout=timeout) for _ in range(count)]
        assert errors == [None] * count, errors

    def run(self, specs: list[dict[str, Any]], timeout: float) -> None:
        self.submit(specs)
        self.collect(len(specs), timeout)

    def kill(self, pid: int) -> None:
        """SIGKILL the pool process ``pid`` (mid-trial) and spawn a fresh one in its place."""
        (index,) = [i for i, p in enumerate(self.processes) if p.pid == pid]
        os.kill(pid, signal.SIGKILL)
        self.processes[index].join(timeout=30)
        self.processes[index] = self._start(self.tasks[index])

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def grpc_proxy_url(postgres_url: str) -> Iterator[str]:
    """Optuna's gRPC proxy server on 127.0.0.1, in front of the PostgreSQL server, in its own
    process; workers reach it with ``GrpcStorageProxy`` (``grpc://127.0.0.1:PORT``)."""
    port = _free_port()
    server = textwrap.dedent(
        f"""
        import os
        from concurrent.futures import ThreadPoolExecutor
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.get_storage(os.environ["OPTUNA_CONVEXITY_POSTGRES_URL"])
        optuna.storages.run_grpc_proxy_server(
            storage, host="127.0.0.1", port={port}, thread_pool=ThreadPoolExecutor(32)
        )
        """
    )
    # The URL (a password, in general) goes through the environment, not the command line.
    environment = {**os.environ, "OPTUNA_CONVEXITY_POSTGRES_URL": postgres_url}
    process = subprocess.Popen([sys.executable, "-c", server], env=environment)
    try:
        proxy = worker.storage_of({"storage": f"grpc://127.0.0.1:{port}"})
        proxy.wait_server_ready(timeout=60)
        proxy.close()
        yield f"grpc://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STATS["runs"] or STATS["crash_runs"] or STATS["restart_runs"]:
        terminalreporter.write_line(
            "distributed: {runs} multi-process runs with {duplicated_ranks} duplicated and "
            "{missing_ranks} missing promotions; {crash_runs} crash runs and {restart_runs} "
            "restart runs completed every promotion exactly once".format(**STATS)
        )
    if any(runs for runs, _ in FAULTS.values()):
        terminalreporter.write_line(
            "distributed: fault runs (a worker SIGKILLed mid-trial), recovered with no manual "
            "step: " + ", ".join(f"{name} {ok} of {runs}" for name, (runs, ok) in FAULTS.items())
        )
