"""The one line a user adds to an objective: score the screening trial."""

from __future__ import annotations

from collections.abc import Iterable
import math
from numbers import Real
from typing import Any

import optuna
from optuna.trial import BaseTrial
from optuna.trial import FrozenTrial
from optuna.trial import Trial
from torch import nn

from optuna_convexity import _attrs
from optuna_convexity import _criteria
from optuna_convexity._pruner import ConvexityPruner
from optuna_convexity._sampler import ConvexitySampler
from optuna_convexity.hessian import BaseHessianNormEstimator
from optuna_convexity.hessian import LastLayer
from optuna_convexity.hessian import LossFunction
from optuna_convexity.hessian import strong_convexity
from optuna_convexity.hessian import StrongConvexity


def is_screening(trial: BaseTrial | FrozenTrial) -> bool:
    """Whether ``trial`` is a screening trial of a :class:`ConvexitySampler` search.

    Use it to spend less on screening trials, e.g. a shorter data loader. It is ``False`` for
    promoted trials, and for trials outside such a search (``optuna.trial.FixedTrial``).

    Example:

        .. code-block:: python

            epochs = 1 if optuna_convexity.is_screening(trial) else 30
    """
    return trial.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_SCREENING


def is_promoted(trial: BaseTrial | FrozenTrial) -> bool:
    """Whether ``trial`` is a promoted (full-budget) trial of a :class:`ConvexitySampler`."""
    return trial.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_PROMOTED


def report_convexity(
    trial: BaseTrial,
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFunction,
    *,
    estimator: str | BaseHessianNormEstimator | None = None,
    last_layer: LastLayer = None,
    max_batches: int | None = None,
    max_examples: int | None = None,
    end_trial: bool | None = None,
) -> float | None:
    """Score a screening trial by the flatness of its loss; do nothing in other trials.

    Call it once per epoch (or once, after the first epoch) in the objective. In a screening
    trial the first call computes ``mu`` with
    :func:`~optuna_convexity.hessian.strong_convexity` (the supremum over the loader's batches
    of the Hessian-norm estimate) and records it in the trial's ``user_attrs``; later calls
    return the recorded value. In a promoted trial, and outside a convexity search, it returns
    ``None`` at once.

    How the screening trial then ends (``end_trial``):

    - with :class:`ConvexityPruner` as the study's pruner (the default ``end_trial=None``), the
      call returns and the next ``trial.should_prune()`` in the training loop ends the trial;
      so the one-epoch validation value your loop reports is kept;
    - otherwise ``end_trial=None`` raises :class:`optuna.TrialPruned` right after scoring, so
      an objective without a pruning loop still stops at the cheap fidelity. If the sampler's
      criterion ranks by the one-epoch value (the default ``"value"`` does) and the trial has
      not reported one yet, that would end it before its value is stored: the call raises a
      ``ValueError`` instead, which names the fixes (use :class:`ConvexityPruner`, wrapping your
      pruner; report the value first; or pass ``end_trial=True`` to rank by the training
      loss).

    Args:
        trial: The trial passed to the objective.
        model: The model, after its first training epoch.
        loader: ``(inputs, targets)`` batches to score on, typically the training loader.
        loss_fn: The training loss.
        estimator: Overrides the sampler's ``estimator``.
        last_layer: The model's last ``nn.Linear`` layer, if it cannot be found automatically.
        max_batches: Score at most this many batches.
        max_examples: Score at most (about) this many examples.
        end_trial: ``True`` always raises ``TrialPruned`` after scoring a screening trial,
            ``False`` never does; ``None`` decides as described above.

    Returns:
        ``mu`` in a screening trial (``nan`` if no batch gave a finite estimate), else ``None``.

    Example:

        .. code-block:: python

            for epoch in range(n_epochs):
                train_one_epoch(model, train_loader, optimizer)
                optuna_convexity.report_convexity(trial, model, train_loader, loss_fn)
                trial.report(evaluate(model), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
    """
    if trial.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_WITHDRAWN:
        raise optuna.TrialPruned(f"withdrawn: {trial.user_attrs.get(_attrs.EXCLUDED, '')}")
    if not is_screening(trial):
        return None
    recorded = _attrs.recorded_mu(trial)
    if recorded is not None:
        mu = recorded
    else:
        result = score(
            trial,
            model,
            loader,
            loss_fn,
            estimator=estimator,
            last_layer=last_layer,
            max_batches=max_batches,
            max_examples=max_examples,
        )
        mu = result.mu
        record_mu(
            trial,
            mu,
            estimator=result.estimator,
            n_batches=result.n_batches,
            n_nonfinite_batches=result.n_nonfinite,
            train_loss=result.loss,
        )
    if end_trial is None:
        end_trial = not (
            isinstance(trial, Trial) and isinstance(trial.study.pruner, ConvexityPruner)
        )
        if end_trial:
            _check_value_reported(trial)
    if end_trial:
        raise optuna.TrialPruned(f"screening trial scored: mu = {mu:.6g}")
    return mu


def _check_value_reported(trial: BaseTrial) -> None:
    """Refuse to end a screening trial before it reported the value its criterion ranks by."""
    if not isinstance(trial, Trial):
        return
    sampler = trial.study.sampler
    criterion = sampler.criterion if isinstance(sampler, ConvexitySampler) else None
    if criterion not in _criteria.READS_VALUE:
        return
    if trial.study._storage.get_trial(trial._trial_id).intermediate_values:
        return
    pruner = type(trial.study.pruner).__name__
    wrapped = (
        f"optuna.pruners.{pruner}()"
        if type(trial.study.pruner).__module__.startswith("optuna.pruners")
        else "your_pruner"
    )
    raise ValueError(
        f"report_convexity would end screening trial {trial.number} before it reported its "
        f"one-epoch value, which criterion {criterion!r} ranks the candidates by: the study's "
        f"pruner is {pruner}, not ConvexityPruner, so report_convexity ends screening trials "
        "itself (optuna.TrialPruned) right after scoring. Create the study with "
        f"pruner=optuna_convexity.ConvexityPruner({wrapped}) (screening "
        "trials then end at the trial.should_prune() after trial.report(); your pruner decides "
        "for promoted trials), or call trial.report(value, epoch) before report_convexity, or "
        "pass end_trial=True to rank the candidates by their training loss instead."
    )


def score(
    trial: BaseTrial,
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: LossFunction,
    *,
    estimator: str | BaseHessianNormEstimator | None,
    last_layer: LastLayer,
    max_batches: int | None,
    max_examples: int | None,
) -> StrongConvexity:
    """Compute ``trial``'s score (without recording it) with ``estimator`` if given, else the
    sampler's, else ``"last_layer"`` (a trial outside a study, e.g. ``FixedTrial``)."""
    if estimator is None:
        sampler = trial.study.sampler if isinstance(trial, Trial) else None
        estimator = sampler.estimator if isinstance(sampler, ConvexitySampler) else "last_layer"
    return strong_convexity(
        model,
        loader,
        loss_fn,
        estimator=estimator,
        last_layer=last_layer,
        max_batches=max_batches,
        max_examples=max_examples,
    )


def record_mu(
    trial: BaseTrial,
    mu: float,
    *,
    estimator: str = "custom",
    n_batches: int | None = None,
    n_nonfinite_batches: int | None = None,
    train_loss: float | None = None,
) -> None:
    """Record a ``mu`` computed elsewhere as the score of a screening trial.

    The low-level half of :func:`report_convexity`: use it when the score comes from your own
    code (another framework, a precomputed value). It does not end the trial.

    Args:
        trial: A running screening trial.
        mu: The score; lower is flatter. Non-finite or negative scores are recorded, and
            the trial is then excluded from promotion with the reason shown.
        estimator: A short description of how ``mu`` was computed.
        n_batches: How many batches the score covers, if known.
        n_nonfinite_batches: How many of them were left out as non-finite, if known.
        train_loss: The model's mean training loss at scoring time, if known; criteria that
            use it (``criterion="train_loss"``) fall back to the reported value without it.

    Raises:
        ValueError: If ``trial`` is not a screening trial or ``mu`` is not a real number.

    Example:

        .. code-block:: python

            if optuna_convexity.is_screening(trial):
                optuna_convexity.record_mu(trial, my_sharpness(model), estimator="mine")
                raise optuna.TrialPruned()
    """
    if not is_screening(trial):
        phase = trial.user_attrs.get(_attrs.PHASE, "not part of a convexity search")
        raise ValueError(
            f"record_mu needs a screening trial; trial {trial.number} is {phase}. Guard the "
            "call with optuna_convexity.is_screening(trial)."
        )
    if isinstance(mu, bool) or not isinstance(mu, Real):
        raise ValueError(f"mu must be a real number, got {mu!r} ({type(mu).__name__}).")
    for key, value in _attrs.score_attrs(trial, float(mu)).items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(_attrs.ESTIMATOR, str(estimator))
    if n_batches is not None:
        trial.set_user_attr(_attrs.N_BATCHES, int(n_batches))
    if n_nonfinite_batches is not None:
        trial.set_user_attr(_attrs.N_NONFINITE_BATCHES, int(n_nonfinite_batches))
    if train_loss is not None:
        if isinstance(train_loss, bool) or not isinstance(train_loss, Real):
            raise ValueError(
                f"train_loss must be a real number or None, got {train_loss!r} "
                f"({type(train_loss).__name__})."
            )
        if math.isfinite(float(train_loss)):
            trial.set_user_attr(_attrs.TRAIN_LOSS, float(train_loss))
    trial.set_user_attr(_attrs.SCORED_BY, trial.number)
