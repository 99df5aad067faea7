"""``plot_screening``: ``mu`` of every screening candidate, with the promotion cut-off."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
import math
from typing import Any
from typing import NamedTuple
from typing import TYPE_CHECKING

import optuna
from optuna.study import Study

from optuna_convexity._criteria import describe
from optuna_convexity._state import config_of
from optuna_convexity._summary import _mu
from optuna_convexity._summary import _number
from optuna_convexity._summary import _params
from optuna_convexity._summary import RoundSummary
from optuna_convexity._summary import summarize
from optuna_convexity.visualization import _plotly_imports


if TYPE_CHECKING:
    import plotly.graph_objects as go

_logger = optuna.logging.get_logger(__name__)


class _Status(Enum):
    PROMOTED = "Promoted"
    LEADING = "Promoted if screening ended now"
    NOT_PROMOTED = "Not promoted"
    NOT_RANKED = "Not ranked (see hover)"


_MARKERS: dict[_Status, dict[str, Any]] = {
    _Status.PROMOTED: {"color": "#2ca02c", "symbol": "diamond", "size": 11},
    _Status.LEADING: {"color": "#98df8a", "symbol": "diamond-open", "size": 11},
    _Status.NOT_PROMOTED: {"color": "#1f77b4", "symbol": "circle", "size": 8},
    _Status.NOT_RANKED: {"color": "#cccccc", "symbol": "x", "size": 8},
}


class _ScreeningPoint(NamedTuple):
    number: int
    round: int
    mu: float
    status: _Status
    text: str
    #: The criterion's tier the candidate was ranked in (``None`` without tiers).
    tier: str | None = None


class _CutOff(NamedTuple):
    round: int
    #: Trial numbers spanned by the round's candidates.
    first: int
    last: int
    #: The level that separates the candidates promoted (below) from the others.
    mu: float
    #: Whether the round's screening is done (otherwise the cut-off is provisional).
    final: bool
    text: str


class _ScreeningInfo(NamedTuple):
    points: list[_ScreeningPoint]
    cut_offs: list[_CutOff]
    #: Candidates without a finite score (running, failed before scoring, ...): not drawn.
    n_without_mu: int
    log_scale: bool
    #: The study's criterion (``None`` for an empty study) and its tiers, first ranked first.
    criterion: str | None = None
    tiers: tuple[str, ...] = ()


def _get_screening_info(
    study: Study, summaries: Sequence[RoundSummary] | None = None
) -> _ScreeningInfo:
    if summaries is None:
        summaries = summarize(study)
    if not summaries:
        return _ScreeningInfo([], [], 0, True)
    config = config_of(study)
    n_promoted = config.n_promoted
    points: list[_ScreeningPoint] = []
    cut_offs: list[_CutOff] = []
    n_without_mu = 0
    for summary in summaries:
        selected = {
            c.number
            for c in summary.candidates
            if c.screening_rank is not None and c.screening_rank <= n_promoted
        } | summary.promoted_numbers
        progress = "" if summary.screening_done else ", screening in progress"
        for c in summary.candidates:
            if c.mu is None or not math.isfinite(c.mu):
                n_without_mu += 1
                continue
            tier = f" ({c.tier})" if c.tier is not None else ""
            if c.screening_rank is None:
                status = _Status.NOT_RANKED
                detail = f"not ranked: {c.excluded}"
            elif c.number in selected:
                status = _Status.PROMOTED if summary.screening_done else _Status.LEADING
                detail = f"screening rank {c.screening_rank}{tier}"
            else:
                status = _Status.NOT_PROMOTED
                detail = f"screening rank {c.screening_rank}{tier}"
            text = "<br>".join(
                [
                    f"Trial {c.number} (round {summary.round}{progress})",
                    f"mu: {_mu(c.mu)}, {detail}",
                    f"one-epoch value: {_number(c.value)}",
                    _params(c.params),
                ]
            )
            points.append(_ScreeningPoint(c.number, summary.round, c.mu, status, text, c.tier))
        cut_off = _get_cut_off(summary, selected)
        if cut_off is not None:
            cut_offs.append(cut_off)
    log_scale = all(p.mu > 0 for p in points)
    first_rank: dict[str, int] = {}
    for summary in summaries:
        for c in summary.candidates:
            if c.tier is not None and c.screening_rank is not None:
                first_rank[c.tier] = min(
                    first_rank.get(c.tier, c.screening_rank), c.screening_rank
                )
    tiers = tuple(sorted(first_rank, key=lambda tier: first_rank[tier]))
    return _ScreeningInfo(points, cut_offs, n_without_mu, log_scale, config.criterion, tiers)


def _get_cut_off(summary: RoundSummary, selected: set[int]) -> _CutOff | None:
    """The level between the promoted candidates and the others, if ``mu`` alone separates
    them (with criteria other than ``"mu"`` it rarely does)."""
    ranked = [
        c
        for c in summary.candidates
        if c.screening_rank is not None and c.mu is not None and math.isfinite(c.mu)
    ]
    inside = [c.mu for c in ranked if c.number in selected and c.mu is not None]
    outside = [c.mu for c in ranked if c.number not in selected and c.mu is not None]
    if not inside or (outside and max(inside) >= min(outside)):
        return None
    highest = max(inside)
    if not outside:
        level = highest
    elif highest > 0:
        level = math.sqrt(highest * min(outside))  # halfway on the log axis
    else:
        level = (highest + min(outside)) / 2
    numbers = [c.number for c in summary.candidates]
    state = "" if summary.screening_done else " so far"
    return _CutOff(
        round=summary.round,
        first=min(numbers),
        last=max(numbers),
        mu=level,
        final=summary.screening_done,
        text=(
            f"Round {summary.round}: the {len(inside)} flattest candidates{state} "
            f"(mu up to {_mu(highest)}) are promoted"
        ),
    )


def plot_screening(study: Study) -> go.Figure:
    """Plot ``mu`` of every screening candidate of a convexity search, round by round.

    Each point is a screening candidate (the latest attempt, if it was retried), at its trial
    number and its score ``mu`` (the flatness of its loss after one epoch; lower is flatter, the
    axis is logarithmic when every score is positive). The candidates chosen for promotion
    are marked, and a dashed line per round marks the promotion cut-off: the candidates below
    it are rerun at the full budget. While a round is still screening, the line is dotted and
    the marks show what would be promoted if the screening ended now. Candidates that cannot
    be promoted are drawn in grey if they have a score, and the hover says why; those without
    a score (still running, failed before scoring) are not drawn. The subtitle says which
    criterion ranked the candidates. When the criterion ranks in tiers (e.g. the better half of
    the one-epoch values first), candidates of the first tier are drawn filled and the others
    open, which shows why a lower ``mu`` was not promoted; and when ``mu`` alone does not
    separate the promoted candidates from the others, no cut-off line is drawn.

    The data are those of :func:`optuna_convexity.summarize`. The study may be loaded from
    its storage while the search runs.

    Example:

        .. code-block:: python

            import optuna
            import optuna_convexity
            from optuna_convexity.visualization import plot_screening


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

            fig = plot_screening(study)
            fig.show()

    Args:
        study:
            A study run by :class:`~optuna_convexity.ConvexitySampler`.

    Returns:
        A :class:`plotly.graph_objects.Figure` object.

    Raises:
        ImportError: If plotly is not installed.
        ValueError: If the study holds trials but none of a convexity search.
    """
    _plotly_imports.check("plot_screening")
    if not study.get_trials(deepcopy=False):
        _logger.warning(f"Study {study.study_name!r} has no trials: the screening plot is empty.")
        return _get_screening_plot(_ScreeningInfo([], [], 0, True))
    return _get_screening_plot(_get_screening_info(study))


def _log_ticks(low: float, high: float) -> list[float]:
    """Round ticks between ``low`` and ``high`` for a log axis: 1, 2 and 5 of each decade, or
    only 1 over many decades (plotly labels minor ticks with a lone digit: 0.5 reads "5")."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1.0, 2.0, 5.0) if last - first <= 4 else (1.0,)
    ticks = [
        float(f"{step * 10.0**decade:.12g}") for decade in range(first, last + 1) for step in steps
    ]
    return [t for t in ticks if low <= t <= high]


def _criterion_line(criterion: str, tiers: Sequence[str]) -> str:
    """The subtitle: what ordered the candidates, cut into lines that fit the figure."""
    words = f"Ranked by {criterion}: {describe(criterion)}.".split()
    if len(tiers) > 1:
        words += f"Filled: {tiers[0]}, ranked first; open: {', '.join(tiers[1:])}.".split()
    lines = [""]
    for word in words:
        if lines[-1] and len(lines[-1]) + len(word) > 70:  # fits half a dashboard page
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}".strip()
    return "<br>".join(lines)


def _marker(status: _Status, tiers: Sequence[str], tier: str | None) -> dict[str, Any]:
    """The status's marker; open (outline only) for candidates outside the first tier."""
    marker = dict(_MARKERS[status])
    if tier is not None and tiers and tier != tiers[0] and status != _Status.NOT_RANKED:
        marker["symbol"] = marker["symbol"].removesuffix("-open") + "-open"
        marker["line"] = {"width": 2, "color": marker["color"]}
    return marker


def _get_screening_plot(info: _ScreeningInfo) -> go.Figure:
    yaxis: dict[str, Any] = {
        "title": "mu (lower is flatter)",
        "type": "log" if info.log_scale else "linear",
    }
    if info.log_scale and info.points:
        ticks = _log_ticks(min(p.mu for p in info.points), max(p.mu for p in info.points))
        if len(ticks) >= 2:  # otherwise plotly's own ticks, within one decade, read well
            yaxis["tickvals"] = ticks
            yaxis["ticktext"] = [f"{t:g}" for t in ticks]
    title = "Screening Plot"
    top = 80  # the title, then the legend above the plot area
    if info.criterion is not None:
        subtitle = _criterion_line(info.criterion, info.tiers)
        title += f"<br><sup>{subtitle}</sup>"
        top += 14 * (subtitle.count("<br>") + 1)
    layout = _plotly_imports.go.Layout(
        title={"text": title, "y": 0.96, "yanchor": "top"},
        margin={"t": top},
        xaxis={"title": "Trial"},
        yaxis=yaxis,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0.0},
    )
    traces = []
    for status in _Status:
        for tier in (*info.tiers, None):
            points = [p for p in info.points if p.status == status and p.tier == tier]
            if not points:
                continue
            traces.append(
                _plotly_imports.go.Scatter(
                    x=[p.number for p in points],
                    y=[p.mu for p in points],
                    mode="markers",
                    name=status.value if tier is None else f"{status.value}, {tier}",
                    text=[p.text for p in points],
                    hovertemplate="%{text}<extra></extra>",
                    marker=_marker(status, info.tiers, tier),
                )
            )
    for i, cut_off in enumerate(info.cut_offs):
        traces.append(
            _plotly_imports.go.Scatter(
                x=[cut_off.first - 0.5, cut_off.last + 0.5],
                y=[cut_off.mu, cut_off.mu],
                mode="lines",
                name="Promotion cut-off",
                legendgroup="cut-off",
                showlegend=i == 0,
                line={"color": "#d62728", "dash": "dash" if cut_off.final else "dot"},
                text=[cut_off.text, cut_off.text],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    figure = _plotly_imports.go.Figure(data=traces, layout=layout)
    if not info.points:
        figure.add_annotation(
            text="No screening trial has a score (mu) yet.",
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
        )
    elif info.n_without_mu:
        figure.add_annotation(
            text=f"{info.n_without_mu} candidate(s) without a score are not drawn.",
            xref="paper",
            yref="paper",
            x=1.0,
            y=0.0,
            xanchor="right",
            yanchor="bottom",
            showarrow=False,
            font={"size": 10, "color": "#888888"},
        )
    return figure
