"""What a convexity search has done so far, round by round, read from the study."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from optuna_convexity import _attrs
from optuna_convexity import _criteria
from optuna_convexity import _state
from optuna_convexity._criteria import PremiseCheck
from optuna_convexity._listeners import Finishing
from optuna_convexity._roles import assign_roles
from optuna_convexity._roles import candidates_of_round
from optuna_convexity._roles import last_promotion_premise
from optuna_convexity._roles import premise_check
from optuna_convexity._roles import ranking
from optuna_convexity._roles import Resolution
from optuna_convexity._roles import signals


_logger = optuna.logging.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class ScreenedCandidate:
    """One screened configuration (its latest attempt, if it was retried)."""

    number: int
    state: TrialState
    params: dict[str, Any]
    mu: float | None
    #: The last value the objective reported (the one-epoch value of a screening trial).
    value: float | None
    #: Position in the round's promotion order (the study's ``criterion``; with ``"mu"``,
    #: 1 = flattest); ``None`` if excluded or running.
    screening_rank: int | None
    #: Why the candidate cannot be promoted (``None`` if it can).
    excluded: str | None
    #: The tier of the study's criterion the candidate is ranked in (e.g. ``"better half"``);
    #: ``None`` for criteria without tiers, and for candidates not ranked.
    tier: str | None = None


@dataclasses.dataclass(frozen=True)
class Promotion:
    """A promoted trial: a candidate rerun at the full budget."""

    rank: int
    number: int
    parent: int
    mu: float | None
    state: TrialState
    value: float | None


@dataclasses.dataclass(frozen=True)
class RoundSummary:
    """A round: its screening candidates and its promotions."""

    round: int
    #: Whether every screening trial of the round has finished (promotion can be decided).
    screening_done: bool
    candidates: list[ScreenedCandidate]
    promotions: list[Promotion]
    #: Ranks with no valid candidate left; their trials screened for the next round.
    unfilled_ranks: list[int]
    #: How well ``mu`` and the one-epoch value ranked the completed promotions' results
    #: (``None`` before a promotion of the round completes).
    premise: PremiseCheck | None = None

    @property
    def promoted_numbers(self) -> set[int]:
        return {p.parent for p in self.promotions}


def summarize(study: optuna.Study) -> list[RoundSummary]:
    """The rounds of a :class:`ConvexitySampler` search, from the study's storage.

    Works on any study loaded from storage (the sampler's settings are read from the trials'
    attributes if the study was loaded without it). While a round's screening runs, its
    candidates are ranked among those finished so far.

    Example:

        .. code-block:: python

            for round_ in optuna_convexity.summarize(study):
                print(round_.round, [c.mu for c in round_.candidates])
    """
    trials = study.get_trials(deepcopy=False)
    config = _state.config_of(study, trials)
    n_screening, n_promoted = config.n_screening, config.n_promoted
    criterion, asynchronous = config.criterion, config.asynchronous
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    if asynchronous:  # no barrier: every round is ranked as it stands
        roles = assign_roles(trials, n_screening, n_promoted, asynchronous=True)
        rounds_seen = {r.round for r in roles.values() if r.phase == "screening"}
        resolution = Resolution(
            roles,
            {r: candidates_of_round(trials, roles, r) for r in rounds_seen},
            {},
            None,
            [],
        )
    else:
        resolution = _state.resolve(study, trials, config)
    promotions: dict[int, dict[int, Promotion]] = {}
    for trial in trials:
        if trial.user_attrs.get(_attrs.PHASE) != _attrs.PHASE_PROMOTED:
            continue
        mu = trial.user_attrs.get(_attrs.MU)
        promotion = Promotion(
            rank=int(trial.user_attrs[_attrs.RANK]),
            number=trial.number,
            parent=int(trial.user_attrs[_attrs.PARENT]),
            mu=float(mu) if mu is not None else None,
            state=trial.state,
            value=_attrs.final_value(trial),
        )
        by_rank = promotions.setdefault(int(trial.user_attrs[_attrs.ROUND]), {})
        previous = by_rank.get(promotion.rank)
        # A retried promotion: show the attempt that completed, or else the latest one.
        if previous is None or previous.state != TrialState.COMPLETE:
            by_rank[promotion.rank] = promotion
    rounds = sorted(
        {r for r, c in resolution.candidates.items() if c}
        | {role.round for role in resolution.roles.values() if role.phase == "screening"}
        | set(promotions)
    )
    summaries = []
    for round_number in rounds:
        candidates = resolution.candidates.get(round_number)
        if candidates is None:
            candidates = candidates_of_round(trials, resolution.roles, round_number)
        closed = round_number in resolution.rankings or (
            asynchronous
            and len(candidates) >= n_screening
            and not any(c.running for c in candidates)
        )
        ranked = (
            resolution.rankings[round_number]
            if round_number in resolution.rankings
            else ranking(candidates, criterion, maximize)
        )
        ranks = {c.root: rank for rank, c in enumerate(ranked, start=1)}
        tiers = {
            r.root: r.tier
            for r in _criteria.rank([signals(c) for c in ranked], criterion, maximize)
        }
        screened = [
            ScreenedCandidate(
                number=c.final.number,
                state=c.final.state,
                params=dict(c.final.params),
                mu=c.mu,
                value=_attrs.reported_value(c.final),
                screening_rank=ranks.get(c.root),
                excluded=c.exclusion,
                tier=tiers.get(c.root),
            )
            for c in candidates
        ]
        by_rank = promotions.get(round_number, {})
        summaries.append(
            RoundSummary(
                round=round_number,
                screening_done=closed,
                candidates=screened,
                promotions=[by_rank[rank] for rank in sorted(by_rank)],
                unfilled_ranks=(
                    list(range(len(ranked) + 1, n_promoted + 1))
                    if round_number in resolution.rankings
                    else []
                ),
                premise=premise_check(trials, round_number, criterion, maximize),
            )
        )
    return summaries


def log_premise(study: optuna.Study, finishing: Finishing | None = None) -> None:
    """A listener of the search: when a round's last promotion completes, log how well
    ``mu`` and the one-epoch value ranked the full-budget results, as a warning if ``mu`` ran
    against the criterion's premise (the same sentence the leaderboard shows)."""
    if finishing is None or finishing[1] != TrialState.COMPLETE:
        return
    trial = finishing[0]
    if trial.user_attrs.get(_attrs.PHASE) != _attrs.PHASE_PROMOTED:
        return
    config = _state.config_of(study)
    round_number = int(trial.user_attrs[_attrs.ROUND])
    ranking = _state.frozen_rankings(study).get(round_number)
    if config.asynchronous or ranking is None:  # no last promotion: see summarize() instead
        return
    check = last_promotion_premise(
        study.get_trials(deepcopy=False),
        finishing,
        min(config.n_promoted, len(ranking)),
        config.criterion,
        study.direction == optuna.study.StudyDirection.MAXIMIZE,
    )
    if check is not None:
        log = _logger.warning if check.against_premise else _logger.info
        log(f"Round {round_number} of the convexity search: {check.describe()}")


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _mu(value: float | None) -> str:
    """``mu`` with four significant digits, trailing zeros kept (``0.5000``, ``1.250e-05``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:#.4g}"


def _params(params: dict[str, Any]) -> str:
    return markdown_text(
        ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
        )
    )


_MARKDOWN_ESCAPES = str.maketrans(
    {
        "\\": "\\\\",
        "|": "\\|",
        "`": "\\`",
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "\n": " ",
        "\r": " ",
    }
)


def markdown_text(text: str) -> str:
    """``text`` (e.g. a categorical parameter's value) as literal text in a Markdown table
    cell: a ``|`` would end the cell, a line break the table, and HTML would be rendered by the
    dashboard's note (``<script>`` or an ``<img>`` in a value); they are escaped."""
    return text.translate(_MARKDOWN_ESCAPES)


#: Space at the start of every cell but the first: optuna-dashboard's Note tab draws tables
#: without cell padding, and GFM keeps this space (it trims ASCII spaces only).
_GAP = "\u2003"


def _row(cells: list[str]) -> str:
    """A Markdown table row whose cells keep apart in the dashboard."""
    return "| " + " | ".join([cells[0], *(_GAP + cell for cell in cells[1:])]) + " |"


def _table(headings: list[str], alignments: str) -> list[str]:
    """A Markdown table's first two lines; ``alignments`` has ``r`` or ``l`` per column."""
    rule = ["---:" if a == "r" else ":---" for a in alignments]
    return [_row(headings), f"|{'|'.join(rule)}|"]


def leaderboard(study: optuna.Study, *, top: int | None = None) -> str:
    """A Markdown leaderboard of the search: screening ranks with ``mu``, promoted results.

    ``top`` limits the screening rows per round (by default, the promoted candidates plus five)
    and the table says how many it left out. It is the text the dashboard note shows and the
    quickstart prints. It names the study's metric if the study has one
    (``study.set_metric_names``), says which criterion orders the promotions and, for a
    criterion with tiers (e.g. the better half of the one-epoch values first), the tier of each
    candidate, so that a lower ``mu`` ranked below a higher one reads as intended.

    Example:

        .. code-block:: python

            print(optuna_convexity.leaderboard(study))
    """
    names = study.metric_names
    metric = markdown_text(names[0]) if names else "value"
    config = _state.config_of(study)
    criterion = config.criterion
    lines = [
        f'Promotion order, `criterion="{criterion}"`: {_criteria.describe(criterion)}.',
        "",
    ]
    summaries = summarize(study)
    for summary in summaries:
        n_valid = sum(1 for c in summary.candidates if c.screening_rank is not None)
        status = "screening done" if summary.screening_done else "screening in progress"
        lines.append(
            f"### Round {summary.round}: {len(summary.candidates)} screened ({status}, "
            f"{n_valid} valid), {len(summary.promotions)} promoted"
        )
        lines.append("")
        tiered = any(c.tier is not None for c in summary.candidates)
        tier_heading, tier_alignment = (["tier"], "l") if tiered else ([], "")
        lines += _table(
            ["screening rank", "trial", *tier_heading, "mu", f"one-epoch {metric}", "params"],
            f"rr{tier_alignment}rrl",
        )
        limit = top if top is not None else len(summary.promotions) + 5
        ordered = sorted(
            summary.candidates,
            key=lambda c: (c.screening_rank is None, c.screening_rank or 0, c.number),
        )
        ranked = [c for c in ordered if c.screening_rank is not None]
        for c in ranked[:limit]:
            marker = " (promoted)" if c.number in summary.promoted_numbers else ""
            tier = [str(c.tier)] if tiered else []
            cells = [f"{c.screening_rank}{marker}", str(c.number), *tier, _mu(c.mu)]
            lines.append(_row([*cells, _number(c.value), _params(c.params)]))
        if len(ranked) > limit:
            lines.append("")
            lines.append(
                f"*{len(ranked) - limit} more ranked candidates not shown "
                f"(`leaderboard(study, top={len(ranked)})` lists them all).*"
            )
        excluded = [c for c in ordered if c.screening_rank is None]
        if excluded:
            reasons: dict[str, list[int]] = {}
            for c in excluded:
                reasons.setdefault(c.excluded or "?", []).append(c.number)
            lines.append("")
            lines.append(
                "Not ranked: "
                + "; ".join(
                    f"{reason} (trials {', '.join(map(str, numbers))})"
                    for reason, numbers in reasons.items()
                )
            )
        if summary.promotions or summary.unfilled_ranks:
            lines.append("")
            headings = ["promoted rank", "trial", "parent", "mu", "state", metric]
            lines += _table(headings, "rrrrlr")
            for p in summary.promotions:
                cells = [str(p.rank), str(p.number), str(p.parent), _mu(p.mu), p.state.name]
                lines.append(_row([*cells, _number(p.value, 6)]))
            for rank in summary.unfilled_ranks:
                lines.append(_row([str(rank), "-", "-", "-", "no valid candidate left", "-"]))
        if summary.premise is not None:
            warning = (
                "**Against the criterion's premise.** " if summary.premise.against_premise else ""
            )
            lines.append("")
            lines.append(f"Premise check: {warning}{summary.premise.describe()}")
        lines.append("")
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if completed:
        best = study.best_trial
        lines.append(
            f"**Best trial: {best.number}**, {metric} {_number(best.value, 6)}, "
            f"params {_params(best.params)}"
        )
    elif summaries:
        lines.append(_nothing_completed(summaries, config.n_screening))
    return "\n".join(lines).rstrip() + "\n"


def _nothing_completed(summaries: list[RoundSummary], n_screening: int) -> str:
    """Why the study has no best trial yet (Optuna says only "No trials are completed yet")."""
    first = summaries[0]
    if not first.screening_done:
        waiting = (
            f"round {first.round} promotes once its {n_screening} screening trials have "
            f"finished ({sum(1 for c in first.candidates if c.state.is_finished())} so far)"
        )
    else:
        waiting = f"round {first.round}'s promoted trials have not completed"
    return (
        "**No trial has completed yet**, so `study.best_trial` raises: screening trials end "
        f"PRUNED, only promoted trials complete, and {waiting}. Run more trials (a round is "
        "`n_screening + n_promoted`)."
    )
