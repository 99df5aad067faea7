"""A short real search in SQLite, and the real optuna-dashboard serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tests.dashboard._search import run_search
from tests.dashboard._search import STUDY_NAME
from tests.dashboard._server import dashboard_server
from tests.dashboard._server import DashboardServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium (skipped without it)")


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The storage URL of a finished search: two rounds, run by two threads."""
    path: Path = tmp_path_factory.mktemp("search") / "search.db"
    storage = f"sqlite:///{path}"
    run_search(storage, n_jobs=2)
    return storage


@pytest.fixture(scope="session")
def searched_study(searched: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=searched)


@pytest.fixture(scope="session")
def server(searched: str) -> Iterator[DashboardServer]:
    with dashboard_server(searched) as running:
        yield running
