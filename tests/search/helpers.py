"""Objectives with synthetic scores, and checks of the search's invariants."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

import optuna_convexity
from optuna_convexity import _attrs


def synthetic_mu(params: dict[str, Any]) -> float:
    """A deterministic, distinct score per configuration."""
    return (params["x"] - 0.3) ** 2 + 0.01 * params["y"] + 1e-3


def objective(trial: optuna.Trial, *, sleep: float = 0.0, epochs: int = 3) -> float:
    """Screening trials record a synthetic mu and end at epoch 0; promoted ones 'train'."""
    x = trial.suggest_float("x", -1.0, 1.0)
    y = trial.suggest_int("y", 0, 9)
    if sleep:
        time.sleep(random.uniform(0.0, sleep))
    for epoch in range(epochs):
        if optuna_convexity.is_screening(trial):
            optuna_convexity.record_mu(trial, synthetic_mu(trial.params))
        trial.report(x + epoch, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x**2 + y


def phases(study: optuna.Study) -> dict[str, list[FrozenTrial]]:
    grouped: dict[str, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        grouped.setdefault(trial.user_attrs.get(_attrs.PHASE, "none"), []).append(trial)
    return grouped


def promotion_order(study: optuna.Study, valid: list[FrozenTrial]) -> list[FrozenTrial]:
    """The valid candidates in the order the study's criterion promotes them, worked out here.

    ``"mu"``: lowest ``mu`` first. ``"mu_in_better_half"``: first the candidates whose last
    reported value is among the better ceil(n/2) of the n values (a tie at the boundary only if
    it fits whole), lowest ``mu`` first; then the rest, lowest ``mu`` first.
    ``"high_mu_in_better_half"``: the same halves, highest ``mu`` first. ``"value"``: best
    reported value first (ties by lower training loss), no value last (by training loss).
    ``"train_loss"``: lowest recorded training loss first if every candidate has one, else as
    ``"value"``.
    """
    config = study._storage.get_study_system_attrs(study._study_id)["convexity:config"]
    criterion = config["criterion"]
    by_mu = sorted(valid, key=lambda t: (t.user_attrs[_attrs.MU], t.number))
    if criterion == "mu":
        return by_mu
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    reported = {}
    for t in valid:
        if t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
            if math.isfinite(value):
                reported[t.number] = sign * value  # lower is better
    losses = [t.user_attrs.get(_attrs.TRAIN_LOSS) for t in valid]
    if criterion == "train_loss" and all(loss is not None for loss in losses):
        return sorted(valid, key=lambda t: (t.user_attrs[_attrs.TRAIN_LOSS], t.number))
    if criterion in ("value", "train_loss"):

        def loss(t: FrozenTrial) -> tuple[bool, float]:
            recorded = t.user_attrs.get(_attrs.TRAIN_LOSS)
            return (recorded is None, recorded or 0.0)

        by_number = sorted(valid, key=lambda t: t.number)
        with_value = sorted(
            (t for t in by_number if t.number in reported),
            key=lambda t: (reported[t.number], loss(t)),
        )
        without = sorted((t for t in by_number if t.number not in reported), key=loss)
        return with_value + without
    slots = (len(reported) + 1) // 2
    better: set[int] = set()
    for value in sorted(set(reported.values())):
        group = {n for n, v in reported.items() if v == value}
        if len(better) + len(group) > slots:
            break
        better |= group
    if criterion == "high_mu_in_better_half":
        by_mu = sorted(valid, key=lambda t: (-t.user_attrs[_attrs.MU], t.number))
    return sorted(by_mu, key=lambda t: t.number not in better)


def check_round(study: optuna.Study, round_number: int, n_screening: int, n_promoted: int) -> None:
    """The invariants of a finished round, recomputed from the stored trials."""
    trials = study.get_trials(deepcopy=False)
    screening = [
        t
        for t in trials
        if t.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_SCREENING
        and t.user_attrs.get(_attrs.ROUND) == round_number
    ]
    promoted = [
        t
        for t in trials
        if t.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_PROMOTED
        and t.user_attrs.get(_attrs.ROUND) == round_number
    ]
    assert len({t.user_attrs[_attrs.SLOT] for t in screening if _attrs.SLOT in t.user_attrs}) == (
        n_screening
    )
    assert all(t.state != TrialState.COMPLETE for t in screening), "a screening trial completed"
    valid = [
        t
        for t in screening
        if t.state == TrialState.PRUNED
        and t.user_attrs.get(_attrs.SCORED_BY) == t.number
        and t.user_attrs.get(_attrs.MU) is not None
        and math.isfinite(t.user_attrs[_attrs.MU])
        and t.user_attrs[_attrs.MU] >= 0
    ]
    expected = promotion_order(study, valid)[:n_promoted]
    complete = [t for t in promoted if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[_attrs.RANK] for t in complete) == list(
        range(1, len(expected) + 1)
    ), "each rank must complete exactly once"
    by_rank = {t.user_attrs[_attrs.RANK]: t for t in complete}
    for rank, parent in enumerate(expected, start=1):
        child = by_rank[rank]
        assert child.user_attrs[_attrs.PARENT] == parent.number
        assert child.params == parent.params
        assert child.user_attrs[_attrs.MU] == parent.user_attrs[_attrs.MU]
    assert len({t.user_attrs[_attrs.PARENT] for t in complete}) == len(complete)
