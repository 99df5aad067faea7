"""The real optuna-dashboard serves the search: trial attributes, the note and the figures."""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

from optuna_convexity import _attrs
from optuna_convexity import leaderboard
from optuna_convexity._criteria import describe
from optuna_convexity._dashboard import MU_VS_VALUE_FIGURE_ID
from optuna_convexity._dashboard import NOTE_HEADING
from optuna_convexity._dashboard import SCREENING_FIGURE_ID
from optuna_convexity._summary import _mu
from optuna_convexity._summary import _number
from optuna_convexity._summary import _row
from optuna_convexity.visualization import plot_mu_vs_value
from optuna_convexity.visualization import plot_screening
from tests.dashboard._search import N_PROMOTED
from tests.dashboard._search import N_ROUNDS
from tests.dashboard._search import N_SCREENING
from tests.dashboard._search import STUDY_NAME
from tests.dashboard._server import DashboardServer


pytest.importorskip("optuna_dashboard", reason="needs the dashboard extra")
pytest.importorskip("plotly", reason="needs the dashboard extra")


@pytest.fixture(scope="module")
def detail(server: DashboardServer) -> dict[str, Any]:
    """``GET /api/studies/<id>``, what the dashboard's study page shows."""
    (study,) = [s for s in server.get("/api/studies")["study_summaries"]]
    assert study["study_name"] == STUDY_NAME
    served: dict[str, Any] = server.get(f"/api/studies/{study['study_id']}")
    return served


def _trials(study: optuna.Study, phase: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.user_attrs.get(_attrs.PHASE) == phase]


def test_every_trial_is_served_with_its_convexity_attributes(
    detail: dict[str, Any], searched_study: optuna.Study
) -> None:
    served = {
        t["number"]: {a["key"]: a["value"] for a in t["user_attrs"]} for t in detail["trials"]
    }
    assert sorted(served) == [t.number for t in searched_study.trials]
    screening = _trials(searched_study, _attrs.PHASE_SCREENING)
    promoted = _trials(searched_study, _attrs.PHASE_PROMOTED)
    assert (len(screening), len(promoted)) == (N_ROUNDS * N_SCREENING, N_ROUNDS * N_PROMOTED)
    for trial in screening:
        attrs = served[trial.number]
        assert attrs[_attrs.PHASE] == "screening"
        assert float(attrs[_attrs.MU]) == trial.user_attrs[_attrs.MU]
        assert attrs[_attrs.ESTIMATOR] == "last_layer"
        for key in (_attrs.ROUND, _attrs.SLOT, _attrs.SCORED_BY, _attrs.N_BATCHES):
            assert attrs[key] == str(trial.user_attrs[key])
    for trial in promoted:
        attrs = served[trial.number]
        assert attrs[_attrs.PHASE] == "promoted"
        for key in (_attrs.ROUND, _attrs.RANK, _attrs.PARENT):
            assert attrs[key] == str(trial.user_attrs[key])
        assert float(attrs[_attrs.MU]) == trial.user_attrs[_attrs.MU]
    # The trials table can sort and filter by the numeric attributes.
    sortable = {a["key"] for a in detail["union_user_attrs"] if a["sortable"]}
    assert {_attrs.MU, _attrs.ROUND, _attrs.RANK, _attrs.PARENT, _attrs.SLOT} <= sortable
    assert _attrs.PROMOTED in sortable
    for trial in searched_study.trials:
        assert served[trial.number][_attrs.PROMOTED] == str(int(trial in promoted))


def test_each_promoted_trial_has_a_note_saying_why(
    detail: dict[str, Any], searched_study: optuna.Study
) -> None:
    notes = {t["number"]: t["note"]["body"] for t in detail["trials"]}
    for trial in _trials(searched_study, _attrs.PHASE_SCREENING):
        assert notes[trial.number] == ""
    for trial in _trials(searched_study, _attrs.PHASE_PROMOTED):
        rank, round_ = trial.user_attrs[_attrs.RANK], trial.user_attrs[_attrs.ROUND]
        parent = searched_study.trials[trial.user_attrs[_attrs.PARENT]]
        # The search runs criterion="mu": the rank is the parent's place by mu among the
        # round's valid candidates, worked out here from the stored trials.
        valid = sorted(
            (t.user_attrs[_attrs.MU], t.number)
            for t in _trials(searched_study, _attrs.PHASE_SCREENING)
            if t.user_attrs[_attrs.ROUND] == round_ and _attrs.EXCLUDED not in t.user_attrs
        )
        assert valid[rank - 1][1] == parent.number
        value = parent.intermediate_values[max(parent.intermediate_values)]
        assert notes[trial.number] == (
            f"### Promoted: rank {rank} of round {round_}\n\n"
            f"Reruns screening trial {parent.number} with its parameters at the full budget.\n\n"
            f"- mu of trial {parent.number}: {parent.user_attrs[_attrs.MU]:.6g} (last_layer)\n"
            f"- one-epoch value of trial {parent.number}: {value:.6g}\n"
            f"- why: it ranks {rank} of the round's {len(valid)} valid candidates, by "
            f'`criterion="mu"`: {describe("mu")}.\n'
        )


def test_note_holds_the_leaderboard_with_every_promoted_result(
    detail: dict[str, Any], searched_study: optuna.Study
) -> None:
    body = detail["note"]["body"]
    assert detail["note"]["version"] >= 1
    assert body.startswith(NOTE_HEADING + "\n")
    # The leaderboard as the finished study gives it now: the last update was not outdated.
    assert body.endswith(leaderboard(searched_study))
    for trial in _trials(searched_study, _attrs.PHASE_PROMOTED):
        assert trial.state == TrialState.COMPLETE
        row = _row(
            [
                str(trial.user_attrs[_attrs.RANK]),
                str(trial.number),
                str(trial.user_attrs[_attrs.PARENT]),
                _mu(trial.user_attrs[_attrs.MU]),
                "COMPLETE",
                _number(trial.value, 6),
            ]
        )
        assert row in body, f"trial {trial.number} is not shown finished: {row}"
    for round_number in range(N_ROUNDS):
        assert f"### Round {round_number}: {N_SCREENING} screened (screening done" in body


def _figures(detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}


def test_screening_figure_marks_the_promoted_candidates_and_the_cut_off(
    detail: dict[str, Any], searched_study: optuna.Study
) -> None:
    figure = _figures(detail)[SCREENING_FIGURE_ID]
    markers = [t for t in figure["data"] if t["mode"] == "markers"]
    drawn = {x: y for t in markers for x, y in zip(t["x"], t["y"])}
    screening = _trials(searched_study, _attrs.PHASE_SCREENING)
    assert drawn == {t.number: t.user_attrs[_attrs.MU] for t in screening}
    parents = {t.user_attrs[_attrs.PARENT] for t in _trials(searched_study, _attrs.PHASE_PROMOTED)}
    (promoted,) = [t for t in markers if t["name"] == "Promoted"]
    assert set(promoted["x"]) == parents
    lines = [t for t in figure["data"] if t["mode"] == "lines"]
    assert len(lines) == N_ROUNDS
    for round_number, line in enumerate(lines):
        level = line["y"][0]
        in_round = [t for t in screening if t.user_attrs[_attrs.ROUND] == round_number]
        assert line["x"] == [
            min(t.number for t in in_round) - 0.5,
            max(t.number for t in in_round) + 0.5,
        ]
        for trial in in_round:
            below = trial.user_attrs[_attrs.MU] < level
            assert below == (trial.number in parents), f"trial {trial.number}, cut-off {level}"
    assert figure["layout"]["yaxis"]["type"] == "log"


def test_mu_vs_value_figure_has_every_promoted_result(
    detail: dict[str, Any], searched_study: optuna.Study
) -> None:
    figure = _figures(detail)[MU_VS_VALUE_FIGURE_ID]
    (complete,) = [t for t in figure["data"] if t["name"] == "Complete"]
    drawn = sorted(zip(complete["x"], complete["y"]))
    promoted = _trials(searched_study, _attrs.PHASE_PROMOTED)
    assert drawn == sorted((t.user_attrs[_attrs.MU], t.value) for t in promoted)
    (best,) = [t for t in figure["data"] if t["name"] == "Best Trial"]
    assert (best["x"], best["y"]) == (
        [searched_study.best_trial.user_attrs[_attrs.MU]],
        [searched_study.best_value],
    )
    assert all(math.isfinite(v) for v in complete["y"])


def test_served_figures_are_those_of_the_visualization_module(
    detail: dict[str, Any], searched_study: optuna.Study
) -> None:
    figures = _figures(detail)
    assert figures[SCREENING_FIGURE_ID] == json.loads(plot_screening(searched_study).to_json())
    assert figures[MU_VS_VALUE_FIGURE_ID] == json.loads(plot_mu_vs_value(searched_study).to_json())
