"""The ``optuna-convexity`` command on stored searches, as a user runs it."""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import optuna
import pytest

from optuna_convexity import _cli
from tests.search.helpers import objective


ROOT = Path(__file__).resolve().parents[2]


def _search(storage: str | optuna.storages.BaseStorage, name: str = "cli") -> optuna.Study:
    import optuna_convexity

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=optuna_convexity.ConvexitySampler(5, 2, seed=0, criterion="mu"),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(objective, n_trials=7)
    return study


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'search.db'}"
    _search(url)
    return url


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = _cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_leaderboard_prints_what_leaderboard_returns(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import optuna_convexity

    status, out, err = _run(capsys, "leaderboard", "--storage", sqlite_url, "--study-name", "cli")
    assert status == 0, err
    study = optuna.load_study(study_name="cli", storage=sqlite_url)
    assert out == optuna_convexity.leaderboard(study)
    assert "### Round 0: 5 screened (screening done, 5 valid), 2 promoted" in out
    # --top limits the screening rows; the study name is optional with one study stored
    status, top_one, _ = _run(capsys, "leaderboard", "--storage", sqlite_url, "--top", "1")
    assert status == 0 and top_one == optuna_convexity.leaderboard(study, top=1)


def test_summary_json_is_what_summarize_returns(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import optuna_convexity

    status, out, err = _run(
        capsys, "summary", "--json", "--storage", sqlite_url, "--study-name", "cli"
    )
    assert status == 0, err
    record = json.loads(out)
    study = optuna.load_study(study_name="cli", storage=sqlite_url)
    (summary,) = optuna_convexity.summarize(study)
    (round_,) = record["rounds"]
    assert round_["round"] == 0 and round_["screening_done"] is True
    assert [c["number"] for c in round_["candidates"]] == [c.number for c in summary.candidates]
    assert [c["mu"] for c in round_["candidates"]] == [c.mu for c in summary.candidates]
    assert [c["state"] for c in round_["candidates"]] == ["PRUNED"] * 5
    assert [(p["rank"], p["number"], p["parent"], p["value"]) for p in round_["promotions"]] == [
        (p.rank, p.number, p.parent, p.value) for p in summary.promotions
    ]
    assert record["best_trial"]["number"] == study.best_trial.number
    assert record["direction"] == "MINIMIZE"
    status, text, _ = _run(capsys, "summary", "--storage", sqlite_url)
    assert status == 0
    assert "round 0: 5 screened (done, 5 valid), 2 promoted; best promoted: trial" in text


def test_journal_file_and_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "search.log"
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = _search(journal, name="journal")
    # A Journal file path, as Optuna's CLI takes it, from OPTUNA_STORAGE
    monkeypatch.setenv("OPTUNA_STORAGE", str(path))
    status, out, err = _run(capsys, "leaderboard", "--study-name", "journal")
    assert status == 0, err
    import optuna_convexity

    assert out == optuna_convexity.leaderboard(study)


def test_not_a_convexity_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    plain = optuna.create_study(study_name="plain", storage=url)
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    status, out, err = _run(capsys, "leaderboard", "--storage", url, "--study-name", "plain")
    assert status == 1 and out == ""
    assert "Study 'plain' is not a convexity search: none of its 2 trials was run by " in err


def test_missing_study_and_storage(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(capsys, "summary", "--storage", sqlite_url, "--study-name", "nope")
    assert status == 1
    assert "No study named 'nope' in the storage" in err and "(studies: cli)" in err
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    status, _, err = _run(capsys, "summary", "--storage", missing)
    assert status == 1 and "No such SQLite database" in err
    assert not (tmp_path / "missing.db").exists()  # not created as a side effect
    status, _, err = _run(capsys, "summary", "--storage", str(tmp_path / "no-such.log"))
    assert status == 1 and "Failed to guess storage class from storage_url" in err


def test_no_storage(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    status, _, err = _run(capsys, "leaderboard")
    assert status == 1
    assert "pass --storage URL" in err and "OPTUNA_STORAGE" in err


def test_password_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on port 9 of loopback: the driver's error is about the connection.
    pytest.importorskip("psycopg2")
    secret = "s3cret-Pa55"
    url = f"postgresql+psycopg2://someone:{secret}@127.0.0.1:9/db?connect_timeout=2"
    status, out, err = _run(capsys, "leaderboard", "--storage", url, "--study-name", "x")
    assert status == 1
    assert secret not in out + err
    assert "postgresql+psycopg2://someone:***@127.0.0.1:9/db" in err
    assert _cli.masked(f"redis://:{secret}@host:6379/0") == "redis://:***@host:6379/0"
    assert _cli.masked("sqlite:///a/b.db") == "sqlite:///a/b.db"


def test_console_script_and_module(sqlite_url: str) -> None:
    """``python -m optuna_convexity`` runs the command that ``[project.scripts]`` names."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[project.scripts]\noptuna-convexity = "optuna_convexity._cli:main"\n' in pyproject
    result = subprocess.run(
        [sys.executable, "-m", "optuna_convexity", "summary", "--storage", sqlite_url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Study 'cli' (minimize)\nround 0: 5 screened")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_metric_is_named_when_the_user_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from optuna_convexity._criteria import describe

    url = f"sqlite:///{tmp_path / 'named.db'}"
    study = _search(url, name="named")
    status, unnamed, _ = _run(capsys, "leaderboard", "--storage", url)
    gap = "\u2003"  # the leaderboard pads its cells with an em space for the dashboard's Note
    assert f"| {gap}one-epoch value |" in unnamed and "**, value " in unnamed
    assert unnamed.startswith(f'Promotion order, `criterion="mu"`: {describe("mu")}.\n')
    study.set_metric_names(["loss"])
    status, named, _ = _run(capsys, "leaderboard", "--storage", url)
    assert status == 0
    assert (
        f"| screening rank | {gap}trial | {gap}mu | {gap}one-epoch loss | {gap}params |" in named
    )
    assert (
        f"| promoted rank | {gap}trial | {gap}parent | {gap}mu | {gap}state | {gap}loss |" in named
    )
    assert f"**Best trial: {study.best_trial.number}**, loss " in named
