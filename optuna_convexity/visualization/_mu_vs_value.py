"""``plot_mu_vs_value``: the promoted trials' objective values against their ``mu``."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
import math
from typing import Any
from typing import NamedTuple
from typing import TYPE_CHECKING

import optuna
from optuna.study import Study
from optuna.trial import TrialState

from optuna_convexity._summary import _mu
from optuna_convexity._summary import _number
from optuna_convexity._summary import _params
from optuna_convexity._summary import RoundSummary
from optuna_convexity._summary import summarize
from optuna_convexity.visualization import _plotly_imports
from optuna_convexity.visualization._screening import _log_ticks


if TYPE_CHECKING:
    import plotly.graph_objects as go


_logger = optuna.logging.get_logger(__name__)


class _Status(Enum):
    COMPLETE = "Complete"
    RUNNING = "Running (last reported value)"
    STOPPED = "Pruned or failed (last reported value)"


_MARKERS: dict[_Status, dict[str, Any]] = {
    _Status.COMPLETE: {"color": "#1f77b4", "symbol": "circle", "size": 10},
    _Status.RUNNING: {"color": "#1f77b4", "symbol": "circle-open", "size": 10},
    _Status.STOPPED: {"color": "#cccccc", "symbol": "x", "size": 9},
}


class _PromotedPoint(NamedTuple):
    number: int
    mu: float
    value: float
    status: _Status
    is_best: bool
    text: str


class _MuVsValueInfo(NamedTuple):
    points: list[_PromotedPoint]
    target_name: str
    log_scale: bool


def _get_mu_vs_value_info(
    study: Study, target_name: str, summaries: Sequence[RoundSummary] | None = None
) -> _MuVsValueInfo:
    if summaries is None:
        summaries = summarize(study)
    try:
        best: int | None = study.best_trial.number
    except ValueError:  # no trial is complete yet
        best = None
    points = []
    for summary in summaries:
        params = {c.number: c.params for c in summary.candidates}
        for p in summary.promotions:
            if p.mu is None or not math.isfinite(p.mu):
                continue
            if p.value is None or not math.isfinite(p.value):
                continue
            if p.state == TrialState.COMPLETE:
                status = _Status.COMPLETE
            elif p.state.is_finished():
                status = _Status.STOPPED
            else:
                status = _Status.RUNNING
            text = "<br>".join(
                [
                    f"Trial {p.number}: rank {p.rank} of round {summary.round}, "
                    f"reruns trial {p.parent}",
                    f"mu: {_mu(p.mu)}, {target_name}: {_number(p.value, 6)} ({p.state.name})",
                    _params(params.get(p.parent, {})),
                ]
            )
            points.append(_PromotedPoint(p.number, p.mu, p.value, status, p.number == best, text))
    log_scale = all(p.mu > 0 for p in points)
    return _MuVsValueInfo(points, target_name, log_scale)


def plot_mu_vs_value(study: Study, *, target_name: str = "Objective Value") -> go.Figure:
    """Plot the promoted trials' objective values against their ``mu``.

    Each point is a promoted trial: its ``mu`` (its parent screening trial's score, lower is
    flatter; the axis is logarithmic when every score is positive) against its objective
    value. Running trials are drawn open at their last reported value, pruned and failed ones
    in grey at theirs, and the study's best trial is circled. If flatness after one epoch
    predicts the final result, the points line up.

    The data are those of :func:`optuna_convexity.summarize`. The study may be loaded from
    its storage while the search runs.

    Example:

        .. code-block:: python

            import optuna
            import optuna_convexity
            from optuna_convexity.visualization import plot_mu_vs_value


            def objective(trial):
                x = trial.suggest_float("x", -1.0, 1.0)
                if optuna_convexity.is_screening(trial):
                    optuna_convexity.record_mu(trial, (x - 0.3) ** 2 + 0.01)
                for epoch in range(3):
                    trial.report(1.0 - x**2 + epoch, epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
                return 1.0 - x**2


            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.create_study(
                direction="maximize",
                sampler=optuna_convexity.ConvexitySampler(n_screening=20, n_promoted=4, seed=0),
                pruner=optuna_convexity.ConvexityPruner(),
            )
            study.optimize(objective, n_trials=24)

            fig = plot_mu_vs_value(study, target_name="1 - x^2")
            fig.show()

    Args:
        study:
            A study run by :class:`~optuna_convexity.ConvexitySampler`.
        target_name:
            The name of the objective, for the axis and the hover text.

    Returns:
        A :class:`plotly.graph_objects.Figure` object.

    Raises:
        ImportError: If plotly is not installed.
        ValueError: If the study holds trials but none of a convexity search.
    """
    _plotly_imports.check("plot_mu_vs_value")
    if not study.get_trials(deepcopy=False):
        _logger.warning(f"Study {study.study_name!r} has no trials: the plot is empty.")
        return _get_mu_vs_value_plot(_MuVsValueInfo([], target_name, True))
    return _get_mu_vs_value_plot(_get_mu_vs_value_info(study, target_name))


#: Where a point's label may go, and the label's centre relative to the point, in fractions
#: of the plot's width and height (a label is about 4 % wide and 4 % high).
_LABEL_PLACES = {
    "top center": (0.0, 0.045),
    "bottom center": (0.0, -0.045),
    "middle right": (0.045, 0.0),
    "middle left": (-0.045, 0.0),
}


def _label_positions(points: Sequence[_PromotedPoint], log_scale: bool) -> dict[int, str]:
    """A ``textposition`` for each point's label that keeps it off the other labels and points:
    each label, from left to right, takes the place farthest from what is already drawn."""
    if not points:
        return {}

    def scaled(values: list[float]) -> list[float]:
        low, high = min(values), max(values)
        return [0.5 if high == low else (v - low) / (high - low) for v in values]

    xs = scaled([math.log10(p.mu) if log_scale else p.mu for p in points])
    ys = scaled([p.value for p in points])
    taken = list(zip(xs, ys))  # every marker (point i at index i), then every label placed
    positions = {}
    for index in sorted(range(len(points)), key=lambda i: (xs[i], ys[i])):
        others = [spot for j, spot in enumerate(taken) if j != index]
        place = max(
            _LABEL_PLACES,
            key=lambda name: _clearance(xs[index], ys[index], _LABEL_PLACES[name], others),
        )
        positions[points[index].number] = place
        dx, dy = _LABEL_PLACES[place]
        taken.append((xs[index] + dx, ys[index] + dy))
    return positions


def _clearance(
    x: float, y: float, offset: tuple[float, float], others: list[tuple[float, float]]
) -> float:
    """How far a label at ``offset`` from the point ``(x, y)`` is from everything else drawn
    (city-block distance in plot fractions), less one if it falls outside the plot."""
    x, y = x + offset[0], y + offset[1]
    outside = 0.0 if -0.02 <= x <= 1.02 and -0.05 <= y <= 1.05 else 1.0
    return min((abs(x - a) + abs(y - b) for a, b in others), default=1.0) - outside


def _get_mu_vs_value_plot(info: _MuVsValueInfo) -> go.Figure:
    xaxis: dict[str, Any] = {
        "title": "mu of the screening candidate (lower is flatter)",
        "type": "log" if info.log_scale else "linear",
    }
    if info.log_scale and info.points:
        # plotly's own log ticks crowd within a decade (1, 1.5, 2, ... 4.5): 1-2-5 ticks read
        ticks = _log_ticks(min(p.mu for p in info.points), max(p.mu for p in info.points))
        if len(ticks) >= 2:
            xaxis["tickvals"] = ticks
            xaxis["ticktext"] = [f"{t:g}" for t in ticks]
    positions = _label_positions(info.points, info.log_scale)
    layout = _plotly_imports.go.Layout(
        title="Mu vs Objective Value Plot (promoted trials)",
        xaxis=xaxis,
        yaxis={"title": info.target_name},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0.0},
    )
    traces = []
    for status in _Status:
        points = [p for p in info.points if p.status == status]
        if not points:
            continue
        traces.append(
            _plotly_imports.go.Scatter(
                x=[p.mu for p in points],
                y=[p.value for p in points],
                mode="markers+text",
                name=status.value,
                text=[f"#{p.number}" for p in points],
                textposition=[positions[p.number] for p in points],
                hovertext=[p.text for p in points],
                hovertemplate="%{hovertext}<extra></extra>",
                marker=_MARKERS[status],
            )
        )
    best = [p for p in info.points if p.is_best]
    if best:
        traces.append(
            _plotly_imports.go.Scatter(
                x=[p.mu for p in best],
                y=[p.value for p in best],
                mode="markers",
                name="Best Trial",
                hovertext=[p.text for p in best],
                hovertemplate="%{hovertext}<extra></extra>",
                marker={
                    "color": "#d62728",
                    "symbol": "circle-open",
                    "size": 22,
                    "line": {"width": 2},
                },
            )
        )
    figure = _plotly_imports.go.Figure(data=traces, layout=layout)
    if not info.points:
        figure.add_annotation(
            text="No promoted trial has reported a value yet.",
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    return figure
