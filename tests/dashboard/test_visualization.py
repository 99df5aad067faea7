"""``optuna_convexity.visualization``: the figures, from the data of ``summarize``."""

from __future__ import annotations

import inspect
import math
import re
import textwrap
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

import optuna_convexity
from optuna_convexity import _attrs
from optuna_convexity import visualization
from optuna_convexity._criteria import describe
from optuna_convexity.visualization import plot_mu_vs_value
from optuna_convexity.visualization import plot_screening
from tests.dashboard._search import synthetic_objective
from tests.dashboard._search import synthetic_study


go = pytest.importorskip("plotly.graph_objects", reason="needs the dashboard extra")


def _traces(figure: Any, mode: str) -> dict[str, Any]:
    return {t.name: t for t in figure.data if t.mode == mode}


def _mu(trial: optuna.trial.FrozenTrial) -> float:
    return float(trial.user_attrs[_attrs.MU])


def test_screening_plot_marks_the_flattest_and_the_cut_off_per_round() -> None:
    study = synthetic_study(n_screening=8, n_promoted=3)
    study.optimize(synthetic_objective, n_trials=11 + 5)  # round 1 is still screening
    figure = plot_screening(study)
    assert isinstance(figure, go.Figure)
    markers = _traces(figure, "markers")
    screening = [t for t in study.trials if optuna_convexity.is_screening(t)]
    drawn = {x: y for t in markers.values() for x, y in zip(t.x, t.y)}
    assert drawn == {t.number: _mu(t) for t in screening}

    round_0 = sorted((t for t in screening if t.user_attrs[_attrs.ROUND] == 0), key=_mu)
    round_1 = sorted((t for t in screening if t.user_attrs[_attrs.ROUND] == 1), key=_mu)
    assert set(markers["Promoted"].x) == {t.number for t in round_0[:3]}
    assert set(markers["Promoted if screening ended now"].x) == {t.number for t in round_1[:3]}
    assert set(markers["Not promoted"].x) == {t.number for t in round_0[3:] + round_1[3:]}

    lines = [t for t in figure.data if t.mode == "lines"]
    assert [line.line.dash for line in lines] == ["dash", "dot"]  # final, then provisional
    for line, ranked in zip(lines, (round_0, round_1)):
        level = line.y[0]
        assert _mu(ranked[2]) < level < _mu(ranked[3])
        assert math.isclose(level, math.sqrt(_mu(ranked[2]) * _mu(ranked[3])))
        assert line.x == (
            min(t.number for t in ranked) - 0.5,
            max(t.number for t in ranked) + 0.5,
        )
    assert figure.layout.yaxis.type == "log"
    assert figure.layout.title.text.startswith("Screening Plot<br><sup>Ranked by mu: ")


def test_screening_plot_without_a_cut_off_when_mu_alone_does_not_decide() -> None:
    study = optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(8, 3, seed=1, criterion="mu_in_better_half"),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(synthetic_objective, n_trials=11)
    (summary,) = optuna_convexity.summarize(study)
    chosen = {c.number for c in summary.candidates if (c.screening_rank or 99) <= 3}
    others = [c.mu for c in summary.candidates if c.number not in chosen and c.mu is not None]
    assert max(c.mu or 0 for c in summary.candidates if c.number in chosen) > min(others)
    figure = plot_screening(study)
    promoted = [t for name, t in _traces(figure, "markers").items() if name.startswith("Promoted")]
    assert {x for t in promoted for x in t.x} == chosen
    assert not _traces(figure, "lines")


def test_screening_plot_shows_the_criterions_tiers() -> None:
    """Why a lower mu was not promoted: it is drawn open, in the tier ranked after the first."""
    criterion = "mu_in_better_half"  # a criterion with tiers, named: not the default's business
    study = optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(10, 3, seed=1, criterion=criterion),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(synthetic_objective, n_trials=13)
    (summary,) = optuna_convexity.summarize(study)
    tiers = {c.number: c.tier for c in summary.candidates}
    assert set(tiers.values()) == {"better half", "other half"}
    figure = plot_screening(study)
    for trace in _traces(figure, "markers").values():
        _status, tier = trace.name.split(", ")
        assert {tiers[x] for x in trace.x} == {tier}
        assert trace.marker.symbol.endswith("-open") == (tier == "other half"), trace.name
    flattest = min(summary.candidates, key=lambda c: c.mu or math.inf)
    assert flattest.tier == "other half" and flattest.number not in summary.promoted_numbers
    subtitle = figure.layout.title.text.split("<sup>", 1)[1].replace("<br>", " ")
    assert subtitle.startswith(f"Ranked by {criterion}: {describe(criterion)}.")
    assert "Filled: better half, ranked first; open: other half." in subtitle


def test_mu_vs_value_labels_keep_apart_and_the_log_axis_has_round_ticks() -> None:
    """Labels of close points take different places; ticks are 1, 2 and 5 of each decade."""
    from optuna_convexity.visualization._mu_vs_value import _label_positions
    from optuna_convexity.visualization._mu_vs_value import _PromotedPoint
    from optuna_convexity.visualization._mu_vs_value import _Status

    def point(number: int, mu: float, value: float) -> _PromotedPoint:
        return _PromotedPoint(number, mu, value, _Status.COMPLETE, False, "")

    cluster = [point(1, 2.6, 0.970), point(2, 2.65, 0.9705), point(3, 2.7, 0.970)]
    spread = [point(4, 0.9, 0.955), point(5, 4.5, 0.98)]
    positions = _label_positions(cluster + spread, log_scale=True)
    assert len({positions[p.number] for p in cluster}) == 3

    study = synthetic_study(n_screening=6, n_promoted=3)
    study.optimize(synthetic_objective, n_trials=9)
    figure = plot_mu_vs_value(study)
    ticks = figure.layout.xaxis.tickvals
    mus = [x for t in figure.data for x in t.x]
    if ticks is not None:  # several round ticks in the range: 1-2-5 of each decade
        assert all(f"{t:.0e}"[0] in "125" for t in ticks)
        assert min(mus) <= min(ticks) and max(ticks) <= max(mus)
    (complete,) = [t for t in figure.data if t.name == "Complete"]
    assert len(complete.textposition) == len(complete.x)


def test_screening_plot_shows_excluded_candidates_and_counts_those_without_mu() -> None:
    study = synthetic_study(n_screening=4, n_promoted=2)
    scores = iter([0.5, -1.0, math.inf, 0.2])

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        optuna_convexity.record_mu(trial, next(scores))
        raise optuna.TrialPruned()

    study.optimize(objective, n_trials=4)
    figure = plot_screening(study)
    markers = _traces(figure, "markers")
    assert markers["Not ranked (see hover)"].x == (1,)
    assert "mu is negative" in markers["Not ranked (see hover)"].text[0]
    assert set(markers["Promoted"].x) == {0, 3}
    assert figure.layout.yaxis.type == "linear"  # a negative score cannot go on a log axis
    assert "1 candidate(s) without a score are not drawn" in figure.layout.annotations[0].text


def test_mu_vs_value_plot_shows_finished_and_running_promotions() -> None:
    study = synthetic_study(n_screening=6, n_promoted=3)
    study.optimize(synthetic_objective, n_trials=8)
    running = study.ask()
    running.report(7.5, 0)
    figure = plot_mu_vs_value(study, target_name="loss")
    markers = {t.name: t for t in figure.data}
    promoted = [t for t in study.trials if optuna_convexity.is_promoted(t)]
    complete = [t for t in promoted if t.state == TrialState.COMPLETE]
    assert sorted(zip(markers["Complete"].x, markers["Complete"].y)) == sorted(
        (_mu(t), t.value) for t in complete
    )
    assert markers["Running (last reported value)"].y == (7.5,)
    assert markers["Running (last reported value)"].x == (_mu(promoted[-1]),)
    assert markers["Best Trial"].y == (study.best_value,)
    assert figure.layout.yaxis.title.text == "loss"
    assert figure.layout.xaxis.type == "log"


def test_empty_and_foreign_studies(caplog: pytest.LogCaptureFixture) -> None:
    study = optuna.create_study()
    figure = plot_screening(study)
    assert not figure.data
    assert plot_mu_vs_value(study).layout.annotations[0].text.startswith("No promoted trial")
    foreign = optuna.create_study()
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with pytest.raises(ValueError, match="no trials of a ConvexitySampler search"):
        plot_screening(foreign)


def test_a_study_loaded_from_storage_is_plotted_like_the_running_one(tmp_path: Any) -> None:
    storage = f"sqlite:///{tmp_path / 'loaded.db'}"
    study = synthetic_study(storage, n_screening=6, n_promoted=2)
    study.optimize(synthetic_objective, n_trials=8)
    loaded = optuna.load_study(study_name=study.study_name, storage=storage)
    assert plot_screening(loaded).to_json() == plot_screening(study).to_json()
    assert plot_mu_vs_value(loaded).to_json() == plot_mu_vs_value(study).to_json()


def _examples(function: Any) -> list[str]:
    """The code blocks of a docstring."""
    doc = inspect.getdoc(function) or ""
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:(?: {4}.*)?\n)+)", doc + "\n")
    return [textwrap.dedent(block) for block in blocks]


@pytest.mark.parametrize("function", [plot_screening, plot_mu_vs_value])
def test_docstring_examples_run(function: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []
    monkeypatch.setattr(go.Figure, "show", lambda self, *a, **k: shown.append(self))
    (example,) = _examples(function)
    exec(compile(example, f"<{function.__name__} example>", "exec"), {})
    assert len(shown) == 1 and shown[0].data


def test_is_available_example(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[Any] = []
    monkeypatch.setattr(go.Figure, "show", lambda self, *a, **k: shown.append(self))
    study = synthetic_study(n_screening=4, n_promoted=1)
    study.optimize(synthetic_objective, n_trials=5)
    (example,) = _examples(visualization.is_available)
    exec(compile(example, "<is_available example>", "exec"), {"study": study})
    assert visualization.is_available() and len(shown) == 1
