"""The leaderboard explains itself: the criterion, its tiers, what it left out, mu's digits."""

from __future__ import annotations

import re

import optuna

import optuna_convexity
from optuna_convexity._criteria import describe
from tests.search.helpers import objective


GAP = "\u2003"  # between cells, for optuna-dashboard's Note tab


def _cells(line: str) -> list[str]:
    return [cell.strip().strip(GAP) for cell in line.strip("|").split("|")]


def test_rows_carry_the_criterions_tiers_and_say_what_was_left_out() -> None:
    criterion = "mu_in_better_half"  # a criterion with tiers, named explicitly
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(12, 2, seed=3, criterion=criterion),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(objective, n_trials=14)
    board = optuna_convexity.leaderboard(study)
    assert f'Promotion order, `criterion="{criterion}"`: {describe(criterion)}.' in board

    lines = board.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| screening rank"))
    assert _cells(lines[header]) == [
        "screening rank",
        "trial",
        "tier",
        "mu",
        "one-epoch value",
        "params",
    ]
    rows = [_cells(line) for line in lines[header + 2 : header + 9]]
    assert len(rows) == 7  # the 2 promoted and 5 more
    (summary,) = optuna_convexity.summarize(study)
    by_number = {c.number: c for c in summary.candidates}
    for rank, (rank_cell, number, tier, mu, *_) in enumerate(rows, start=1):
        candidate = by_number[int(number)]
        assert rank_cell.startswith(str(rank)) and candidate.screening_rank == rank
        assert tier == candidate.tier
        # four significant digits, trailing zeros kept
        assert re.fullmatch(r"\d\.\d{3}(e[+-]\d+)?|0\.0*[1-9]\d{3}|\d{2}\.\d{2}|\d{3}\.\d", mu), mu
    tiers = [row[2] for row in rows]
    assert tiers == sorted(tiers, key=lambda t: t != "better half")  # the first tier first
    assert (
        "*5 more ranked candidates not shown (`leaderboard(study, top=12)` lists them all).*"
        in (board)
    )
    assert "more ranked candidates" not in optuna_convexity.leaderboard(study, top=12)


def test_a_criterion_without_tiers_has_no_tier_column() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(5, 2, seed=0, criterion="mu"),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(objective, n_trials=7)
    board = optuna_convexity.leaderboard(study)
    assert 'Promotion order, `criterion="mu"`: ' in board
    assert "tier" not in board
    assert all(c.tier is None for c in optuna_convexity.summarize(study)[0].candidates)


def test_parameter_values_cannot_break_the_table_or_inject_html() -> None:
    """A categorical value with ``|``, a line break or HTML is literal text in its cell (the
    dashboard note renders the leaderboard as Markdown)."""
    values = ["a|b", "<img src=x onerror=alert(1)>", "two\nlines"]
    study = optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(3, 1, seed=0, criterion="mu"),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.set_metric_names(["loss | <b>"])

    def with_odd_values(trial: optuna.Trial) -> float:
        choice = trial.suggest_categorical("choice", values)
        if optuna_convexity.is_screening(trial):
            optuna_convexity.record_mu(trial, 1.0 + values.index(choice) + trial.number)
            raise optuna.TrialPruned()
        return 0.5

    for value in values:
        study.enqueue_trial({"choice": value})
    study.optimize(with_odd_values, n_trials=4)
    text = optuna_convexity.leaderboard(study)
    assert "<img" not in text and "<b>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    columns = {len(re.split(r"(?<!\\)\|", row)) for row in rows[:5]}  # unescaped pipes
    assert len(columns) == 1, rows
    assert r"choice=a\|b" in text
    assert "choice=two lines" in text
