"""The note and the figures the search keeps in optuna-dashboard: content, cost, concurrency."""

from __future__ import annotations

from collections import Counter
import json
import logging
import os
from pathlib import Path
import re
import subprocess
import sys
import textwrap
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

import optuna_convexity
from optuna_convexity import _attrs
from optuna_convexity import _dashboard
from tests.dashboard._search import synthetic_objective
from tests.dashboard._search import synthetic_study


optuna_dashboard = pytest.importorskip("optuna_dashboard", reason="needs the dashboard extra")
pytest.importorskip("plotly", reason="needs the dashboard extra")
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects  # noqa: E402


ROOT = Path(__file__).resolve().parents[2]
GAP = "\u2003"  # between the leaderboard's cells (see optuna_convexity._summary._row)
FIGURES = {_dashboard.SCREENING_FIGURE_ID, _dashboard.MU_VS_VALUE_FIGURE_ID}


class CountingStorage:
    """A storage that counts reads of all trials and records writes of study system attributes,
    and can run something just before a given attribute is written."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.all_trials_reads = 0
        self.writes: list[str] = []
        self.before_write: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def get_all_trials(self, *args: Any, **kwargs: Any) -> Any:
        self.all_trials_reads += 1
        return self._backend.get_all_trials(*args, **kwargs)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        hook = self.before_write.pop(key, None)
        if hook is not None:
            hook()
        self.writes.append(key)
        self._backend.set_study_system_attr(study_id, key, value)

    def reset(self) -> None:
        self.all_trials_reads = 0
        self.writes = []


def _served(study: optuna.Study) -> tuple[str, dict[str, str]]:
    """What optuna-dashboard serves for the study: the note and the figures' JSON."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return optuna_dashboard.get_note(study), get_plotly_graph_objects(attrs)


def _row(note: str, rank: int, number: int) -> str:
    prefix = f"| {rank} | {GAP}{number} |"
    (row,) = [line for line in note.splitlines() if line.startswith(prefix)]
    return row


def _is_current(study: optuna.Study) -> bool:
    """Whether the dashboard shows what the storage holds now (a refresh would write nothing)."""
    before = _served(study)
    storage = CountingStorage(study._storage)
    view = optuna.Study(study.study_name, storage, sampler=study.sampler)  # type: ignore[arg-type]
    _dashboard.refresh(view)
    return not storage.writes and _served(study) == before


def test_note_and_figures_follow_the_search() -> None:
    study = synthetic_study(n_screening=4, n_promoted=2)
    study.optimize(synthetic_objective, n_trials=4)
    assert _served(study) == ("", {})  # screening trials do not refresh
    study.optimize(synthetic_objective, n_trials=2)
    note, figures = _served(study)
    assert note.startswith(_dashboard.NOTE_HEADING + "\n\n" + _dashboard.NOTE_INTRO + "\n\n")
    assert note.endswith(optuna_convexity.leaderboard(study))
    assert set(figures) == FIGURES
    for figure in figures.values():
        assert json.loads(figure)["data"]
    assert _is_current(study)


def test_unchanged_content_costs_one_read_and_no_write() -> None:
    storage = CountingStorage(optuna.storages.InMemoryStorage())
    study = synthetic_study(storage, n_screening=30, n_promoted=10)  # type: ignore[arg-type]
    study.optimize(synthetic_objective, n_trials=40)
    version = study._storage.get_study_system_attrs(study._study_id)["dashboard:note_ver"]
    storage.reset()
    _dashboard.refresh(study)
    assert storage.writes == []
    assert storage.all_trials_reads == 1
    # Text of the user's above the section does not change it.
    note = optuna_dashboard.get_note(study)
    optuna_dashboard.save_note(study, "Mine.\n\n" + note)
    storage.reset()
    _dashboard.refresh(study)
    assert storage.writes == []
    # An outdated section is rewritten (the note only), then read once more to check it.
    optuna_dashboard.save_note(study, note.replace("COMPLETE", "RUNNING"))
    storage.reset()
    _dashboard.refresh(study)
    assert storage.all_trials_reads == 2
    written = Counter(re.sub(r":\d+$", "", key) for key in storage.writes)
    assert set(written) == {"dashboard:note_ver", "dashboard:note_str"}
    assert written["dashboard:note_ver"] == 1
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs["dashboard:note_ver"] == version + 3  # the two saves above, and ours


def test_a_promoted_result_is_shown_before_optuna_stores_it() -> None:
    study = synthetic_study(n_screening=4, n_promoted=2)
    study.optimize(synthetic_objective, n_trials=4)
    trial = study.ask()  # rank 1: its promotion refreshes the dashboard
    assert optuna_convexity.is_promoted(trial)
    assert f"| {GAP}RUNNING |" in _row(_served(study)[0], 1, trial.number)
    trial.report(0.25, 0)

    # What the sampler's after_trial does while Optuna tells the trial, before it stores it:
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.RUNNING
    _dashboard.refresh(study, (frozen, TrialState.COMPLETE, [0.5]))
    assert f"| {GAP}COMPLETE | {GAP}0.5 |" in _row(_served(study)[0], 1, trial.number)
    # Another worker refreshing before Optuna stores the result does not undo it.
    _dashboard.refresh(study)
    note, figures = _served(study)
    assert f"| {GAP}COMPLETE | {GAP}0.5 |" in _row(note, 1, trial.number)
    (complete,) = [
        t
        for t in json.loads(figures[_dashboard.MU_VS_VALUE_FIGURE_ID])["data"]
        if t["name"] == "Complete"
    ]
    assert complete["y"] == [0.5]
    study.tell(trial, 0.5)
    assert _is_current(study)

    # The same through Optuna: the last promoted trial is shown finished after its tell.
    study.optimize(synthetic_objective, n_trials=1)
    last = study.trials[-1]
    assert last.user_attrs[_attrs.RANK] == 2 and last.state == TrialState.COMPLETE
    assert f"| {GAP}COMPLETE | {GAP}{last.value:.6g} |" in _row(_served(study)[0], 2, last.number)
    assert _is_current(study)


def test_text_above_the_heading_is_kept() -> None:
    study = synthetic_study(n_screening=4, n_promoted=2)
    optuna_dashboard.save_note(study, "# My experiment\n\nLearning rates from 1e-4.")
    study.optimize(synthetic_objective, n_trials=5)
    note = _served(study)[0]
    assert note.startswith(
        f"# My experiment\n\nLearning rates from 1e-4.\n\n{_dashboard.NOTE_HEADING}\n"
    )
    # Edited in the dashboard: the new text stays, the section is rewritten after it.
    optuna_dashboard.save_note(study, "Edited.\n" + note[note.index(_dashboard.NOTE_HEADING) :])
    study.optimize(synthetic_objective, n_trials=1)
    note = _served(study)[0]
    assert note.startswith(f"Edited.\n\n{_dashboard.NOTE_HEADING}\n")
    assert note.count(_dashboard.NOTE_HEADING) == 1
    assert note.endswith(optuna_convexity.leaderboard(study))


#: A user's note long enough for the search's section to start in the note's first chunk of
#: 2045 characters and go on in the second one.
USER_NOTE = "My notes. " * 150


def test_torn_content_is_repaired_by_the_next_refresh() -> None:
    study = synthetic_study(n_screening=30, n_promoted=10)
    optuna_dashboard.save_note(study, USER_NOTE)
    study.optimize(synthetic_objective, n_trials=31)
    storage, study_id = study._storage, study._study_id
    attrs = storage.get_study_system_attrs(study_id)
    assert _dashboard.NOTE_HEADING in attrs["dashboard:note_str:0"]
    assert f"| {GAP}COMPLETE |" in attrs["dashboard:note_str:1"]
    # Chunks of another, interleaved write: text that no worker wrote, JSON that does not parse.
    storage.set_study_system_attr(study_id, "dashboard:note_str:1", "garbage")
    key = f"dashboard:plot_data:{_dashboard.SCREENING_FIGURE_ID}:0"
    storage.set_study_system_attr(study_id, key, '{"data": [')
    with pytest.raises(json.JSONDecodeError):
        json.loads(_served(study)[1][_dashboard.SCREENING_FIGURE_ID])
    _dashboard.refresh(study)
    note, figures = _served(study)
    assert "garbage" not in note and note.startswith(USER_NOTE.rstrip() + "\n\n")
    assert note.endswith(optuna_convexity.leaderboard(study))
    assert json.loads(figures[_dashboard.SCREENING_FIGURE_ID])["data"]
    assert _is_current(study)


def test_a_write_of_another_process_inside_ours_is_repaired() -> None:
    storage = CountingStorage(optuna.storages.InMemoryStorage())
    study = synthetic_study(storage, n_screening=30, n_promoted=10)  # type: ignore[arg-type]
    optuna_dashboard.save_note(study, USER_NOTE)
    study.optimize(synthetic_objective, n_trials=31)
    outdated_note, outdated_figures = _served(study)

    def other_process() -> None:
        # An outdated worker (another process, so not behind this process's lock) writes all
        # of its content between two chunk writes of ours.
        backend = optuna.Study(study.study_name, storage._backend)
        optuna_dashboard.save_note(backend, outdated_note)
        for key, figure in outdated_figures.items():
            prefix = f"dashboard:plot_data:{key}:"
            for i in range(0, len(figure), 2045):
                storage._backend.set_study_system_attr(
                    study._study_id, f"{prefix}{i // 2045}", figure[i : i + 2045]
                )

    trial = study.ask()  # promoted rank 2: refreshes
    trial.report(0.75, 0)  # shown as its value so far: the note changes
    storage.before_write["dashboard:note_str:1"] = other_process
    _dashboard.refresh(study)
    assert not storage.before_write, "the competing write did not happen"
    note, figures = _served(study)
    assert note != outdated_note
    assert f"| {GAP}RUNNING | {GAP}0.75 |" in _row(note, 2, trial.number)
    assert note.endswith(optuna_convexity.leaderboard(study))
    assert all(json.loads(figure) for figure in figures.values())
    assert _is_current(study)


def test_worker_processes_sharing_a_database_leave_it_current(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    synthetic_study(storage, n_screening=6, n_promoted=3)  # create it once, before the workers
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.dashboard._worker", storage, "9", "6", "3"],
            cwd=ROOT,
            env=env,
        )
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    study = synthetic_study(storage, n_screening=6, n_promoted=3)
    assert len(study.trials) == 18 and all(t.state.is_finished() for t in study.trials)
    promoted = [t for t in study.trials if optuna_convexity.is_promoted(t)]
    assert len(promoted) == 6
    note, figures = _served(study)
    for trial in promoted:
        row = _row(note, trial.user_attrs[_attrs.RANK], trial.number)
        assert f"| {GAP}COMPLETE | {GAP}{trial.value:.6g} |" in row
    assert set(figures) == FIGURES
    assert _is_current(study)


def test_without_optuna_dashboard_nothing_is_drawn_and_a_warning_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails
    monkeypatch.setattr(_dashboard, "_given", set())  # as in a new process
    studies = [synthetic_study(n_screening=4, n_promoted=2) for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="optuna_convexity._dashboard"):
        for study in studies:  # each refreshes three times: one notice for the process
            study.optimize(synthetic_objective, n_trials=6)
    for study in studies:
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
        attrs = study._storage.get_study_system_attrs(study._study_id)
        assert not [key for key in attrs if key.startswith(("dashboard:", "convexity:dashboard"))]
    (record,) = [r for r in caplog.records if r.name == "optuna_convexity._dashboard"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("optuna-dashboard is not installed")
    assert "pip install 'optuna-convexity[dashboard]'" in record.getMessage()


def test_without_plotly_the_note_is_kept_and_the_plots_say_what_to_install() -> None:
    script = textwrap.dedent(
        """
        import importlib.abc, logging, sys

        class NoPlotly(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "plotly" or name.startswith("plotly."):
                    raise ImportError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoPlotly())
        logging.basicConfig(level=logging.WARNING)

        import optuna_dashboard
        from optuna_convexity import visualization
        from tests.dashboard._search import synthetic_objective, synthetic_study

        study = synthetic_study(n_screening=4, n_promoted=2)
        study.optimize(synthetic_objective, n_trials=6)
        attrs = study._storage.get_study_system_attrs(study._study_id)
        assert optuna_dashboard.get_note(study).startswith("## Convexity search")
        assert not [k for k in attrs if k.startswith("dashboard:plot_data:")]
        assert not visualization.is_available()
        try:
            visualization.plot_screening(study)
        except ImportError as error:
            print("ImportError:", error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    notice = "plotly is not installed: the dashboard note is kept up to date"
    assert result.stderr.count(notice) == 1, result.stderr  # once, though it refreshed 3 times
    assert "ImportError: optuna_convexity.visualization.plot_screening needs plotly" in (
        result.stdout
    )
    assert "pip install plotly" in result.stdout
